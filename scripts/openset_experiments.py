#!/usr/bin/env python3
"""Ways to lower FNIR at a fixed stranger rate that were tried and NOT adopted (issue 12), reproducible.

On lfw-devtrain embeddings of the keypoint space with flip (the default until 2026-12-07), open-set protocol
of agent/evaluation/openset.py (one enrolment photo per person unless said; FNIR at the FPIR-1e-3 threshold
measured on the same searches, "oracle"):

  norm     score normalisation from the gallery itself: score minus a*second best (rank-2), probe-side
           z-norm / mean over its top 20, gallery-side (template) z-norm / mean, S-norm;
  wccn     within-class covariance normalisation learnt on half of the identities, tested on the other half;
  augment  enrolment templates averaged over jittered alignments (rotation, scale, shift) and photometric
           changes (blur, down-scaling, gamma) of the one enrolment photo (re-embeds ~4000 faces);
  mean     several photos per person: cosine to the mean of the person's faces, mapped to the single-face
           scale through per-k impostor curves learnt on half of the identities, at the agent's own threshold
           rule (N = persons) on the other half, against the gallery's max rule (N = faces).

    python scripts/openset_experiments.py norm|wccn|mean [--embeddings emb.npz]
    python scripts/openset_experiments.py augment --embeddings emb.npz

`--embeddings`: an `emb-*.npz` of `face-agent eval --cache-dir` (emb, found); without it the dataset is
embedded first (minutes). docs/openset.md has the figures of 2026-12-03.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import agent.evaluation.openset as openset  # noqa: E402
from agent.evaluation.calibrate import dataset_embeddings, make_engine  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.lfw import central_face, load_dataset  # noqa: E402
from agent.evaluation.metrics import threshold_at_far  # noqa: E402
from agent.evaluation.openset import enrolment, run_searches  # noqa: E402

K = 20  # cohort size of the normalisations
FARS = np.array([1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7])


def _fnir(searches, fpir: float = 1e-3) -> float:
    return searches.fnir(searches.threshold_at_fpir(fpir))


def _topk(m: np.ndarray, k: int) -> np.ndarray:
    largest = -np.partition(-m, k - 1, axis=1)[:, :k]
    return -np.sort(-largest, axis=1)  # best first


def _trial(rng, n_ids: int, g: int, own: np.ndarray):
    """One random gallery of g identities (+1 spare column): the column order, each probe's own column in it
    (-1: not drawn) and whether that lies among the first g."""
    perm = rng.permutation(n_ids)[: g + 1]
    pos = np.full(n_ids, -1)
    pos[perm] = np.arange(g + 1)
    ok = np.where(own >= 0, pos[np.maximum(own, 0)], -1)
    return perm, ok, (ok >= 0) & (ok < g)


def _stranger_scores(s: np.ndarray, ok: np.ndarray, inside: np.ndarray, g: int) -> np.ndarray:
    """Every probe as a stranger against exactly g others: its own column removed, the spare one used
    only by probes whose identity sits among the first g."""
    m = s.copy()
    m[np.flatnonzero(ok >= 0), ok[ok >= 0]] = -np.inf
    m[~inside, g] = -np.inf
    return m


def cmd_norm(emb, found, labels, rng) -> None:
    keep = np.flatnonzero(found)
    e, lab = emb[keep].astype(np.float32), labels[keep]
    enr = enrolment(lab, np.ones(len(lab), bool), 1)
    ids, t = lab[enr], e[enr]
    col = {int(i): k for k, i in enumerate(ids)}
    own = np.array([col.get(int(v), -1) for v in lab])
    s_all, tt = e @ t.T, t @ t.T
    np.fill_diagonal(tt, -np.inf)

    def rules(s, tg):
        top = _topk(s, K + 1)
        s1, am = top[:, 0], np.argmax(s, 1)
        mu_p, sd_p = top[:, 1:].mean(1), top[:, 1:].std(1) + 1e-6
        tk = _topk(tg, K)
        mu_t, sd_t = tk.mean(1), tk.std(1) + 1e-6
        z = (s - mu_t) / sd_t
        out = {
            "raw": (s1, am),
            "rank2 0.3": (s1 - 0.3 * top[:, 1], am),
            "rank2 0.5": (s1 - 0.5 * top[:, 1], am),
        }
        out["probe z"] = ((s1 - mu_p) / sd_p, am)
        out["probe minus mean"] = (s1 - mu_p, am)
        out["template z"] = (z.max(1), z.argmax(1))
        out["template minus mean"] = ((s - mu_t).max(1), (s - mu_t).argmax(1))
        sn = 0.5 * (z + (s - mu_p[:, None]) / sd_p[:, None])
        out["S-norm"] = (sn.max(1), sn.argmax(1))
        sm = s - 0.5 * (mu_t[None] + mu_p[:, None])
        out["minus both means"] = (sm.max(1), sm.argmax(1))
        return out

    for g in (100, 500, 2000):
        acc: dict[str, list] = {}
        for _ in range(10):
            perm, ok, inside = _trial(rng, len(ids), g, own)
            s = s_all[:, perm]
            ss = _stranger_scores(s, ok, inside, g)
            mated = inside & ~enr
            rs, rm = rules(ss, tt[np.ix_(perm, perm)]), rules(s[mated][:, :g], tt[np.ix_(perm[:g], perm[:g])])
            for name in rs:
                a = acc.setdefault(name, [[], [], []])
                a[0].append(rs[name][0])
                a[1].append(rm[name][0])
                a[2].append(rm[name][1] == ok[mated])
        for name, (st, ms, hit) in acc.items():
            st, ms, hit = np.concatenate(st), np.concatenate(ms), np.concatenate(hit)
            t = threshold_at_far(st, 1e-3)
            print(f"G {g:5d} {name:20s} FNIR at FPIR 1e-3: {1 - np.mean(hit & (ms >= t)):.3f}")


def _halves(labels, found, rng):
    ids = np.unique(labels[found])
    half = set(rng.permutation(ids)[: len(ids) // 2].tolist())
    return np.array([int(v) in half for v in labels])


def cmd_wccn(emb, found, labels, rng) -> None:
    in_a = _halves(labels, found, rng)
    for train, test, name in ((in_a, ~in_a, "A->B"), (~in_a, in_a, "B->A")):
        m = train & found
        x, lab = emb[m].astype(np.float64), labels[m]
        centred = np.zeros_like(x)
        for i in np.unique(lab):
            rows = lab == i
            if rows.sum() >= 2:
                centred[rows] = x[rows] - x[rows].mean(0)
        sw = np.cov(centred[np.any(centred != 0, 1)].T, bias=True)
        for lam in (None, 1.0, 0.3, 0.1):
            e = emb.astype(np.float64)
            if lam is not None:
                w, v = np.linalg.eigh(sw + lam * np.trace(sw) / len(sw) * np.eye(len(sw)))
                e = e @ (v @ np.diag(w**-0.5) @ v.T).T
                e /= np.linalg.norm(e, axis=1, keepdims=True)
            e = np.where(found[:, None], e, 0).astype(np.float32)
            sub = np.flatnonzero(test)
            res = run_searches(e[sub], labels[sub], found[sub], [100, 500, 1000], trials=10)
            row = " ".join(f"G{g} {_fnir(s):.3f}" for g, s in res.items())
            print(f"{name} WCCN lambda {lam}: FNIR at FPIR 1e-3: {row}")


def cmd_augment(emb, found, labels, ds, models_dir) -> None:
    import cv2

    from agent.inference.align import chip_transform

    # The keypoint space these figures were measured in (chip_transform jitters the keypoint alignment).
    engine = make_engine(models_dir, "dlib-resnet-v1", "int8", "openvino", flip=True, landmarks="detector")
    spec = engine.embedder.align_spec
    size = int(spec["size"])

    def jitter(rot=0.0, scale=1.0, dx=0.0, dy=0.0):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), rot, scale)
        m[0, 2] += dx * size
        m[1, 2] += dy * size
        return np.vstack([m, [0, 0, 1]])

    geo = [jitter(5), jitter(-5), jitter(0, 1.05), jitter(0, 0.95)]
    geo += [jitter(0, 1, d) for d in (0.03, -0.03)] + [jitter(0, 1, 0, d) for d in (0.03, -0.03)]
    rows = np.flatnonzero(enrolment(labels, found, 1))
    variants = {"base": [], "geometric": [], "photometric": []}
    for i in rows:
        img = engine.load(ds.paths[i].read_bytes())
        faces = engine.detector.detect(img.pixels) or engine.detector.detect(img.pixels, score_threshold=0.25)
        face = central_face(faces, img.width, img.height)
        m = np.vstack([chip_transform(face, spec), [0, 0, 1]])
        chips = [cv2.warpAffine(img.pixels, (g @ m)[:2], (size, size)) for g in [jitter(), *geo]]
        base = chips[0]
        photo = [cv2.GaussianBlur(base, (0, 0), 1.0)]
        for f in (2, 3):
            small = cv2.resize(base, (size // f, size // f), interpolation=cv2.INTER_AREA)
            photo.append(cv2.resize(small, (size, size)))
        for gamma in (1.3, 0.77):
            lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255, 0, 255).astype(np.uint8)
            photo.append(cv2.LUT(base, lut))
        out = engine.embedder.embed_chips(chips + photo)
        variants["base"].append(out[:1])
        variants["geometric"].append(out[: 1 + len(geo)])
        variants["photometric"].append(np.vstack([out[:1], out[1 + len(geo) :]]))
    original = openset.person_scores
    keep = np.flatnonzero(found)
    for name, parts in [*variants.items(), ("all", None)]:
        if parts is None:
            parts = [
                np.vstack([g, p[1:]])
                for g, p in zip(variants["geometric"], variants["photometric"], strict=True)
            ]
        t = np.stack([p.mean(0) for p in parts])
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        templates = emb.copy()
        templates[rows] = t

        def scores(e, lab, enrolled, rule="max", templates=templates):
            ids = np.unique(lab[enrolled])
            cols = np.flatnonzero(enrolled)
            order = cols[np.argsort(lab[cols], kind="stable")]
            return (e @ templates[keep][order].T).astype(np.float32), ids

        openset.person_scores = scores
        try:
            res = run_searches(
                np.where(found[:, None], emb, 0).astype(np.float32), labels, found, [100, 500, 2000]
            )
        finally:
            openset.person_scores = original
        print(
            f"enrolment {name:12s} FNIR at FPIR 1e-3: "
            + " ".join(f"G{g} {_fnir(s):.3f}" for g, s in res.items())
        )


def cmd_mean(emb, found, labels, rng) -> None:
    in_a = _halves(labels, found, rng)
    lf = np.log10(FARS)

    def templates(e, lab, k, exact):
        out, who, nk = [], [], []
        for i in np.unique(lab):
            rows = np.flatnonzero(lab == i)
            if exact and len(rows) < k:
                continue
            v = e[rows[:k]].mean(0)
            out.append(v / np.linalg.norm(v))
            who.append(i)
            nk.append(min(k, len(rows)))
        return np.array(out), np.array(who), np.array(nk)

    ea, la = emb[in_a & found].astype(np.float32), labels[in_a & found]
    curves = {}
    for k in (1, 2, 3, 4, 5):
        t, who, _ = templates(ea, la, k, True)
        s = ea @ t.T
        s = s[la[:, None] != who[None, :]]
        curves[k] = np.array([threshold_at_far(s, f) if f * len(s) >= 20 else np.nan for f in FARS])

    def log_far(c, k):
        cv = curves[min(k, 5)]
        ok = ~np.isnan(cv)
        cv, lv = cv[ok], lf[ok]
        slope = (lv[-1] - lv[-4]) / (cv[-1] - cv[-4])
        return np.where(c > cv[-1], lv[-1] + slope * (c - cv[-1]), np.interp(c, cv, lv))

    def cos1(lg):
        cv = curves[1]
        ok = ~np.isnan(cv)
        cv, lv = cv[ok], lf[ok]
        slope = (cv[-1] - cv[-4]) / (lv[-1] - lv[-4])
        return np.where(lg < lv[-1], cv[-1] + slope * (lg - lv[-1]), np.interp(lg, lv[::-1], cv[::-1]))

    eb, lb = emb[~in_a & found].astype(np.float32), labels[~in_a & found]
    for per in (1, 2, 3):
        t, who, nk = templates(eb, lb, per, False)
        enrolled = np.zeros(len(lb), bool)
        for i in who:
            enrolled[np.flatnonzero(lb == i)[:per]] = True
        s_mean = eb @ t.T
        s_max = np.stack([(eb @ eb[np.flatnonzero(lb == i)[:per]].T).max(1) for i in who], 1)
        s_eq = np.empty_like(s_mean)
        for k in np.unique(nk):
            s_eq[:, nk == k] = cos1(log_far(s_mean[:, nk == k], int(k)))
        col = {int(i): j for j, i in enumerate(who)}
        own = np.array([col[int(v)] for v in lb])
        for g in (100, 500, 1000):
            res: dict[str, list] = {}
            for _ in range(10):
                perm, ok, inside = _trial(rng, len(who), g, own)
                mated = inside & ~enrolled
                for rule, s in (("max (N = faces)", s_max), ("mean, FAR-mapped (N = persons)", s_eq)):
                    m = _stranger_scores(s[:, perm], ok, inside, g)
                    mm = s[mated][:, perm[:g]]
                    r = res.setdefault(rule, [[], [], [], []])
                    r[0].append(m.max(1))
                    r[1].append(mm.max(1))
                    r[2].append(mm.argmax(1) == ok[mated])
                    r[3].append(nk[perm[:g]].sum() if rule.startswith("max") else g)
            for rule, (st, ms, hit, n) in res.items():
                st, ms, hit = np.concatenate(st), np.concatenate(ms), np.concatenate(hit)
                used = float(cos1(np.log10(1e-3 / float(np.mean(n)))))
                fpir = np.mean(st >= used) / 1e-3
                fnir = 1 - np.mean(hit & (ms >= used))
                print(
                    f"{per} photo(s) G {g:4d} {rule:32s} at the agent's rule: FPIR {fpir:.2f}x of the rate, "
                    f"FNIR {fnir:.3f} ({len(ms)} mated searches)"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=("norm", "wccn", "augment", "mean"))
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--embeddings", type=Path, help="emb-*.npz of face-agent eval's cache (emb, found)")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    args = ap.parse_args()
    root = args.data / "lfw-devtrain"
    ds = load_dataset(root)
    if args.embeddings is not None:
        data = np.load(args.embeddings)
        emb, found = data["emb"], data["found"]
    else:
        # The keypoint space of 2026-12-03 (docs/openset.md); the mesh space is scripts/openset_compare.py's.
        engine = make_engine(
            args.models_dir, "dlib-resnet-v1", "int8", "openvino", flip=True, landmarks="detector"
        )
        _, emb, found = dataset_embeddings(engine, root, progress=True)
    rng = np.random.default_rng(0)
    if args.experiment == "augment":
        cmd_augment(emb, found, ds.identities, ds, args.models_dir)
    else:
        {"norm": cmd_norm, "wccn": cmd_wccn, "mean": cmd_mean}[args.experiment](
            emb, found, ds.identities, rng
        )


if __name__ == "__main__":
    main()
