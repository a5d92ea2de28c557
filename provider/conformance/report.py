"""The conformance kit's verdicts: one result per rule, and the report of a run."""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RuleResult:
    name: str
    section: str
    passed: bool
    reason: str = ""

    def line(self) -> str:
        verdict = f"PASS  {self.section:<3} {self.name}"
        return verdict if self.passed else f"FAIL  {self.section:<3} {self.name}: {self.reason}"


@dataclass
class ConformanceReport:
    results: list[RuleResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    @property
    def failed(self) -> list[RuleResult]:
        return [result for result in self.results if not result.passed]

    def summary(self) -> str:
        failed = len(self.failed)
        return f"{len(self.results) - failed} passed, {failed} failed, {len(self.results)} rules"
