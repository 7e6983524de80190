"""The base of every payload contract."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .values import ContractError, check_value


class Contract(BaseModel):
    """One payload: strict types (no coercion of ``"42"`` to 42), extra fields allowed but held
    to :func:`check_value` like everything else."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    #: The topic this payload travels on.
    topic: ClassVar[str] = ""

    @classmethod
    def check(cls, data: Any) -> None:
        """Raise ContractError (naming the first wrong field) unless ``data`` fits."""
        check_value(data, cls.topic or cls.__name__)
        try:
            cls.model_validate(data)
        except ValidationError as e:
            raise ContractError(f"{cls.topic or cls.__name__}: {first_problem(e)}") from e


def first_problem(error: ValidationError) -> str:
    """The first problem pydantic found, where it is, and how many more there are."""
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"field {where!r}: {first['msg']}{more}"
