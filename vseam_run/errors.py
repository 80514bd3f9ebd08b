"""User-facing errors: printed as one clear message, exit code 2, no traceback."""

from __future__ import annotations


class VseamError(Exception):
    """Bad input from the user (a file, a field, an item). The CLI prints it and exits 2."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SpecError(VseamError):
    """A spec or registry file failed validation; carries every error found, not just the first."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        body = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{body}")
