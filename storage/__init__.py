"""The SQL store of active-labeler (SQLModel). Imports neither torch nor gradio."""
