"""The pure core: state types, the legal moves between them, and policies.

Nothing here does I/O or reads a clock.
"""

from .graph import check_move, fold, legal_moves, path_to_pending
from .policies import Owner, owner_is_dead
from .states import FINAL_TYPES, NAMED_STATES, State, StateType, allow_failure, resolve

__all__ = [
    "FINAL_TYPES",
    "NAMED_STATES",
    "Owner",
    "State",
    "StateType",
    "allow_failure",
    "check_move",
    "fold",
    "legal_moves",
    "owner_is_dead",
    "path_to_pending",
    "resolve",
]
