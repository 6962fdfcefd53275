"""fedlib.paper_claims: the claims cell prints every claim and asserts the enforced ones."""

import pytest

from fedlib import paper_claims


def test_check_claims_prints_contradictions_and_asserts_enforced(capsys):
    ok = paper_claims.PaperClaim("Romoa beats the baseline", True, "0.02 < 0.88")
    soft = paper_claims.PaperClaim("RFA beats Krum", False, "0.30 > 0.10", enforce=False)
    lines = paper_claims.check_claims([ok, soft])
    out = capsys.readouterr().out
    assert lines[0].startswith("OK")
    assert "PAPER SAYS RFA beats Krum, OUR RUN SHOWS 0.30 > 0.10" in out
    hard = paper_claims.PaperClaim("Krum is broken", False, "err 0.05")
    with pytest.raises(AssertionError, match="Krum is broken"):
        paper_claims.check_claims([hard, soft])
    assert "PAPER SAYS RFA beats Krum" in capsys.readouterr().out     # printed before raising
