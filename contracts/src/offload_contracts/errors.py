"""How a job's failure is described to users and operators."""

from pydantic import Field

from offload_contracts.base import Contract


class JobError(Contract):
    """Why a job attempt failed."""

    type: str = Field(
        description="Error class: `transient`, `permanent`, `timeout`, `invalid_message`, "
        "or the name of the exception that was not classified."
    )
    message: str = Field(description="Human-readable explanation.")
    retryable: bool = Field(description="Whether this failure may succeed on a later attempt.")
