"""The base every contract derives from: frozen, strict about unknown fields."""

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """A message or payload that crosses a process boundary.

    Frozen so a message cannot be changed after it was validated, and
    `extra="forbid"` so a typo or a message from another contract is refused
    instead of silently ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
