"""SddmmIssue (rtl/vitcod/sddmm_issue.py) against a loop model: the Denser engine walks key
groups x queries x chunks, the Sparser engine groups of lines_s entries of max(chunks,
lines_s) cycles, the first ``chunks`` issuing; cycles with ``run`` low (random) freeze both;
``done`` after the longer walk."""
import random

import pytest

from vitaccel.rtl.vitcod.sddmm_issue import SddmmIssue

from vitcod_bench import config, set_run, simulate


def model(n, f, ld, ls, dgroups, nnz):
    """Per run cycle: the Denser issue (gbase, row, word, chunk) or None, the Sparser issue
    (kbase, chunk) or None."""
    dense = [(g * ld, r, g * n + r, c) for g in range(dgroups) for r in range(n)
             for c in range(f)]
    sparse = [((k, t) if t < f else None) for k in range(0, nnz, ls)
              for t in range(max(f, ls))] if ls else []
    length = max(len(dense), len(sparse))
    return dense + [None] * (length - len(dense)), sparse + [None] * (length - len(sparse))


@pytest.mark.parametrize("n,f,ld,dgroups,nnz", [(5, 3, 2, 2, 7), (4, 1, 1, 3, 9), (6, 2, 0, 0, 5),
                                                (3, 2, 4, 1, 0), (7, 4, 1, 1, 2), (2, 1, 3, 1, 4)])
@pytest.mark.parametrize("seed", range(2))
def test_issue_order_with_random_pauses(n, f, ld, dgroups, nnz, seed):
    cfg = config(d_max=12, macs_per_line=3)           # chunks <= 4
    L = cfg.lines
    dut = SddmmIssue(cfg)
    rng = random.Random(seed)
    want_d, want_s = model(n, f, ld, L - ld, dgroups, nnz)
    got_d, got_s = [], []

    async def bench(ctx):
        set_run(ctx, dut.params, cfg, n=n, chunks=f, g=min(dgroups * ld, n) if dgroups else 0,
                nnz=nnz, lines_d=ld, dense_groups=dgroups)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(10 * len(want_d) + 50):
            run = rng.random() < 0.7
            ctx.set(dut.run, run)
            iss = dut.issue
            *_, done, d, s, gbase, row, word, chunk, kbase, s_chunk = await ctx.tick().sample(
                dut.done, iss.d, iss.s, iss.d_gbase, iss.d_row, iss.d_word, iss.d_chunk,
                iss.s_kbase, iss.s_chunk)
            if done:
                return
            if not run:
                assert not d and not s
                continue
            got_d.append((gbase, row, word, chunk) if d else None)
            got_s.append((kbase, s_chunk) if s else None)
        raise AssertionError("no done")

    simulate(dut, bench)
    assert got_d == want_d
    assert got_s == want_s
