"""`ci-broker demo`'s incident step: a block refuses the identity's refresh and exchange within
2 seconds with the alert written, revoke ends its session, unblock lets it through again; and no
token or credential of the step reaches the output."""

from __future__ import annotations

from broker.demo import Demo


def test_the_demo_shows_a_block_a_revoke_and_an_unblock(demo_run: tuple[Demo, bool, str]) -> None:
    demo, ok, output = demo_run
    assert ok, output
    step = {c.expectation: c.ok for c in demo.checks if c.step == "10"}
    assert step == {
        "the job holds credentials and a session": True,
        "the block is recorded": True,
        "within 2 seconds the blocked identity's refresh is refused": True,
        "and so is its exchange (403, like any refusal)": True,
        "the audit log names the block and the alert is written": True,
        "revoke ends the session and prints the AWS deny policy for what STS already issued": True,
        "after unblock the repository's jobs are granted again": True,
        "the revoked session stays ended": True,
        "each command wrote an audit event naming who ran it": True,
    }
    assert "audit: alert blocked_identity, severity high" in output
    assert "ended 1 broker session (reason: INC-4711)" in output
    assert "audit (operators.log): block by " in output
    assert sum(s.startswith("cibrt_") for s in demo.secrets) >= 4  # the step's refresh tokens too
    assert demo.scrubbed == 0
    assert not any(secret in output for secret in demo.secrets)
