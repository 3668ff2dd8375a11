"""What `verify_model` reports: one `Finding` per check (and per layer where a check looks at layers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """The outcome of one check of a received model.

    Attributes:
        check: the check's name (``architecture``, ``non_finite``, ``input_linear``, ``imprint_rows``,
            ``trap_weights``, ``bias_scale``, ``sign_balance``, ``classifier_rows``, ``classifier_bias``).
        passed: False when the model looks modified in the way this check tests for.
        reason: one line saying what was measured and why it passes or fails.
        value: the measured number (its meaning is stated in ``reason``).
        threshold: the number ``value`` was compared with (see `fedinvert.verify.checks` for how each was set).
        layer: the state-dict key the check looked at, or None for a whole-model check.
    """

    check: str
    passed: bool
    reason: str
    value: float
    threshold: float
    layer: str | None = None

    def line(self) -> str:
        """``ok   check [layer]: reason`` or ``FAIL check [layer]: reason``, one line."""
        where = f" [{self.layer}]" if self.layer else ""
        return f"{'ok  ' if self.passed else 'FAIL'} {self.check}{where}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """All findings of one `verify_model` call; ``suspicious`` when any check failed."""

    findings: tuple[Finding, ...]

    @property
    def suspicious(self) -> bool:
        """True when at least one check failed: the client should not train on this model."""
        return any(not f.passed for f in self.findings)

    @property
    def failed(self) -> tuple[Finding, ...]:
        """The findings whose check failed, in report order."""
        return tuple(f for f in self.findings if not f.passed)

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """Names of the failed checks, each once, in report order."""
        return tuple(dict.fromkeys(f.check for f in self.failed))

    def summary(self) -> str:
        """A human-readable report: one line per finding, then the verdict."""
        lines = [f.line() for f in self.findings]
        if self.suspicious:
            lines.append(
                f"SUSPICIOUS: {len(self.failed)} of {len(self.findings)} findings failed"
                f" ({', '.join(self.failed_checks)})"
            )
        else:
            lines.append(f"clean: all {len(self.findings)} findings passed")
        return "\n".join(lines)
