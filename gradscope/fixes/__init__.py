"""The fixes gradscope knows (stable ids), each with a snippet fitted to the model at hand.

Diagnosis chooses fixes by id; the advice for each id lives in one registry per view:
:data:`~gradscope.fixes.recurrent.OVER_TIME` for recurrent cores and
:data:`~gradscope.fixes.depth.OVER_DEPTH` for a deep stack.
"""

from __future__ import annotations

from gradscope.diagnosis import Diagnosis
from gradscope.fixes.depth import OVER_DEPTH
from gradscope.fixes.numerics import OVER_NUMERICS
from gradscope.fixes.recurrent import OVER_TIME
from gradscope.fixes.sequence import OVER_SEQUENCE
from gradscope.report import Evidence, Finding, Fix, FixId

__all__ = ["OVER_DEPTH", "OVER_NUMERICS", "OVER_SEQUENCE", "OVER_TIME", "build_fixes"]


def _evidence(finding: Finding) -> Evidence:
    """What a finding rests on; every finding diagnosis makes carries it."""
    if finding.evidence is None:
        raise ValueError(f"finding {finding.id} carries no evidence for its fixes")
    return finding.evidence


def _reasons(findings: list[Finding]) -> list[str]:
    """The deciding measurement of each finding, as diagnosis stated it."""
    return [_evidence(finding).reason for finding in findings]


def build_fixes(diagnosis: Diagnosis, epsilon: float) -> list[Fix]:
    """One fix per id the findings call for, in order of first mention.

    A finding about a core gets the recurrent advice, one about the deep stack the advice for
    its blocks, one about the sequence view the advice for a sequence model, one about the
    numbers themselves (NaN, Inf, low precision) the advice for them; a fix several call for
    gets each.
    """
    findings = diagnosis.findings
    by_key = {c.key: c for c in diagnosis.cores}
    fixes = []
    for fix_id in dict.fromkeys(fix_id for finding in findings for fix_id in finding.fixes):
        calling = [f for f in findings if fix_id in f.fixes]
        on_cores = [f for f in calling if _evidence(f).part == "core"]
        on_stack = [f for f in calling if _evidence(f).part == "stack"]
        on_sequence = [f for f in calling if _evidence(f).part == "sequence"]
        on_numerics = [f for f in calling if _evidence(f).part == "numerics"]
        stack = diagnosis.stack if on_stack else None
        sequence = diagnosis.sequence if on_sequence else None
        whys, whats, snippets = [], [], []
        titles = []
        if on_cores:
            advice = OVER_TIME[FixId(fix_id)]
            involved = [by_key[_evidence(f).key] for f in on_cores]
            whys.append("; ".join(dict.fromkeys(_reasons(on_cores))))
            whats.append(advice.what)
            snippets.append(advice.snippet(involved, epsilon))
            titles.append(advice.title)
        if stack is not None:
            advice = OVER_DEPTH[FixId(fix_id)]
            evidence = advice.evidence(stack, diagnosis.layers) if advice.evidence else None
            reasons = [*_reasons(on_stack), *([evidence] if evidence else [])]
            whys.append("; ".join(dict.fromkeys(reasons)))
            whats.append(advice.what)
            snippets.append(advice.snippet(stack, diagnosis.layers))
            titles.insert(0, advice.title)
        if sequence is not None:
            advice = OVER_SEQUENCE[FixId(fix_id)]
            whys.append("; ".join(dict.fromkeys(_reasons(on_sequence))))
            whats.append(advice.what)
            snippets.append(advice.snippet(sequence, epsilon))
            titles.append(advice.title)
        if on_numerics and diagnosis.numerics is not None:
            advice = OVER_NUMERICS[FixId(fix_id)]
            whys.insert(0, "; ".join(dict.fromkeys(_reasons(on_numerics))))
            whats.insert(0, advice.what)
            snippets.insert(0, advice.snippet(diagnosis.numerics))
            titles.insert(0, advice.title)
        title = titles[0]
        fixes.append(
            Fix(
                id=FixId(fix_id),
                title=title,
                detail=f"Why: {'; '.join(whys)}. {' '.join(dict.fromkeys(whats))}",
                snippet="\n\n".join(dict.fromkeys(snippets)),
            )
        )
    return fixes
