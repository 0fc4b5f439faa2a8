"""The store's vocabularies as enums: splits, label kinds, decisions, current-label sources,
roles, dispute reasons and statuses, job states.

They are `StrEnum`s, so a member equals the plain string kept in its column (``Kind.HUMAN ==
"human"``): rows read back as strings compare with members, and members bind as strings in SQL.
"""

from __future__ import annotations

from enum import StrEnum


class Split(StrEnum):
    POOL = "pool"
    HOLDOUT = "holdout"  # a fixed, human-labelled evaluation set the learner never trains on


class Kind(StrEnum):
    """Who wrote a label row."""

    IMPORTED = "imported"  # a given (catalogue) label: what the tool checks, not truth
    HUMAN = "human"  # an annotator on the Label tab
    REVIEW = "review"  # a reviewer settling a dispute


class Decision(StrEnum):
    GIVEN = "given"  # an imported label
    ACCEPTED = "accepted"  # the top suggestion taken
    CORRECTED = "corrected"  # another class chosen
    UNSURE = "unsure"
    SKIPPED = "skipped"
    RESOLVED = "resolved"  # a reviewer's label
    UNDO = "undo"  # cancels the human label named by ``undoes_id``


class Source(StrEnum):
    """Where an item's current label comes from, by precedence (also the export's provenance)."""

    REVIEW = "review"
    CONSENSUS = "consensus"
    SINGLE = "single"
    IMPORTED = "imported"


class Role(StrEnum):
    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"


class DisputeReason(StrEnum):
    ANNOTATORS_DISAGREE = "annotators_disagree"
    MODEL_DISAGREES = "model_disagrees"
    IMPORTED_LABEL_SUSPECT = "imported_label_suspect"
    # Any suspicion on a holdout item: its own list, never mixed into the pool's review queue,
    # because settling it changes the evaluation set.
    HOLDOUT_LABEL_SUSPECT = "holdout_label_suspect"


# The review queue of pool items (the Review tab) and the holdout's own list.
POOL_QUEUE = (DisputeReason.ANNOTATORS_DISAGREE, DisputeReason.MODEL_DISAGREES, DisputeReason.IMPORTED_LABEL_SUSPECT)
HOLDOUT_QUEUE = (DisputeReason.HOLDOUT_LABEL_SUSPECT,)


class DisputeStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class JobState(StrEnum):
    """Where a background job (`storage.jobs`) stands."""

    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # claimed by a worker, which heartbeats while it works
    DONE = "done"
    FAILED = "failed"  # its reason says why (an error, or its worker stopped heartbeating too often)
    CANCELLED = "cancelled"


# States a job can still leave (a unique job is not enqueued twice while one of these holds).
ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class RoundState(StrEnum):
    """What became of one queued item in its round (each item counts in one of these)."""

    LABELLED = "labelled"  # a person gave it a class (not undone)
    UNSURE = "unsure"
    SKIPPED = "skipped"
    UNREADABLE = "unreadable"  # its file cannot be decoded
    OPEN = "open"  # nothing yet


# Decisions with a class, per kind of row that may carry them.
CLASS_DECISIONS = (Decision.ACCEPTED, Decision.CORRECTED)
# Decisions that mean an annotator has dealt with a field of an item (they are not asked about
# it again; `storage.meaning.open_fields`).
SEEN_DECISIONS = (Decision.ACCEPTED, Decision.CORRECTED, Decision.UNSURE, Decision.SKIPPED)
# Decisions that count towards a field's ``overlap`` in the hand-out (a skip does not: someone
# else may know the class).
DONE_DECISIONS = (Decision.ACCEPTED, Decision.CORRECTED, Decision.UNSURE)
