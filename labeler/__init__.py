"""The Gradio labelling app. Owns no business logic: it calls storage/, active/ and models/."""
