"""Self-checks of the toy world, parser and metrics (no model): python test_toy.py"""
import sys, tempfile
import numpy as np
sys.path.insert(0, '/work/toy')
import toyworld as tw, eval_toy as ev


def test_truth_scores_perfect():
    tot = {"n_true": 0, "tp50": 0, "n_pred": 0}
    kept = n = exact = 0
    for k in range(60):
        c = ev.render_clip(10**9 + k, 1 + k % 8, 252)
        a = tw.answers(c.world, c.times, c.labels)
        p = ev.parse(a["count"])
        ct = tw.clip_truth(c.world, c.times, c.labels)
        exact += p.number == len(ct.first)
        m = ev.match_points(c, p.points)
        for key in tot:
            tot[key] += m[key]
        t = ev.track_consistency(c, ev.parse(a["track"]).points)
        kept += t["kept"]; n += t["n_true"]
    assert exact == 60, exact
    assert tot["tp50"] == tot["n_true"] == tot["n_pred"], tot
    assert kept == n, (kept, n)
    print("truth scores perfect:", tot, kept, n)


def test_mp4_matches_render():
    with tempfile.TemporaryDirectory() as tmp:
        diffs = []
        for seed in range(3):
            c = ev.mp4_clip(3 * 10**9 + seed, 8, 252, tmp)
            r = tw.render_model_frames(c.world, c.times, 252)
            d = np.abs(c.frames.astype(float) - r.astype(float))
            diffs.append(d.mean())
            print(f"seed {seed}: {c.world.width}x{c.world.height} rot {c.world.rotation} fps {c.world.fps}: "
                  f"mean abs diff {d.mean():.2f}, p99 {np.percentile(d, 99):.0f}")
        assert max(diffs) < 4.0


def test_parser_robust():
    for s in ['', 'There are', '<points coords="0.0 1 100', '<tracks coords="0.0 1 1000 2000;x">', 'There is 1 person.']:
        ev.parse(s)
    assert ev.parse('There are no people.').number == 0
    assert ev.parse('<points coords="0.0 1 068 810 2 116 357">people</points> There are 2 people.').number == 2


if __name__ == "__main__":
    test_parser_robust(); test_truth_scores_perfect(); test_mp4_matches_render()
    print("ok")
