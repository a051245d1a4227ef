"""The few lines `python -m bench` prints first: per case, our fastest backend against
torch.optim's AdamW (fused, foreach) and torch.compile, and each other optimizer against its
own peers, as ratios from this run with a verdict word; then what the run left out and whether
the machine was quiet enough to trust it."""
from collections import Counter
from typing import Dict, List, Optional

SAME_BAND = 0.05  # ratios within 5% of 1 read "same": runs on a quiet machine repeat to about that
BUSY_CPUS = 0.1  # CPUs' worth of other processes' work above which CPU timings are not representative
OURS = ("ours:cpu", "ours:cuda", "ours:triton", "ours:torch")  # plain steps: no clip, no param modes
PEER_WORDS = {"fused": "torch.optim fused", "foreach": "torch.optim foreach", "compiled": "torch.compile",
              "authors": "the authors' loop", "pytorch_optimizer": "pytorch_optimizer"}
# each optimizer's own peers (fused/foreach of the other optimizers are AdamW's: not theirs)
OWN_PEERS = {"AdamW": ("fused", "foreach", "compiled"), "Adam": ("fused", "foreach", "compiled")}
OTHER_PEERS = ("compiled", "authors", "pytorch_optimizer")


def verdict(ratio: float, apart: bool = True) -> str:
    """ratio: the peer's time / ours; apart: the two rows' interquartile ranges do not overlap.
    A ratio outside the band whose samples' spreads overlap is "unclear": a busy machine's."""
    if 1 / (1 + SAME_BAND) <= ratio <= 1 + SAME_BAND:
        return "same"
    if not apart:
        return "unclear"
    return "faster" if ratio > 1 else "slower"


# "1.45x slower": ours takes 1.45 times the peer's time
PHRASES = {"faster": "{ratio:.2f}x faster than {peer}", "slower": "{inverse:.2f}x slower than {peer}",
           "same": "the same as {peer} ({ratio:.2f}x)",
           "unclear": "not clearly different from {peer} ({ratio:.2f}x, the samples' spreads overlap)"}


def compare(ratio: float, apart: bool, peer: str) -> str:
    """'1.16x faster than X', '1.45x slower than X', 'the same as X (0.98x)', ..."""
    return PHRASES[verdict(ratio, apart)].format(ratio=ratio, inverse=1 / ratio, peer=peer)


def _ratios(row: Dict, peer: str):
    """(ratio, apart) of a row over a peer, or None where the peer was not measured."""
    ratio = row["speedup_over"].get(peer)
    return None if ratio is None else (ratio, row.get("iqr_apart", {}).get(peer, True))


def describe(case: Dict) -> str:
    family, n = case["family"], case["elements"]
    if family == "large":
        return f"one {case['name'].split()[-1]}-element tensor"
    if family == "llama":
        return f"LLaMA-7B-shaped list ({case['tensors']} tensors, {n / 1e6:.1f}M elements)"
    if family == "small":
        return f"{case['tensors']} small tensors (1-4K elements each)"
    return f"ResNet-50's {case['tensors']} tensors ({n / 1e6:.1f}M elements)"


def _dtypes(config: Dict) -> str:
    p, s = config["param_dtype"], config["state_dtype"]
    return f"{p} params and states" if p == s else f"{p} params, {s} states"


def _fastest(rows: List[Dict]) -> Optional[Dict]:
    ours = [r for r in rows if r["impl"] in OURS]
    return min(ours, key=lambda r: r["median_s"]) if ours else None


def _label(row: Dict) -> str:
    return "fused_optim " + row["impl"].split(":")[1]


def _adamw_line(case: Dict, row: Dict) -> str:
    parts = [compare(*_ratios(row, p), PEER_WORDS[p]) for p in OWN_PEERS["AdamW"] if _ratios(row, p)]
    return f"  {describe(case)}: {_label(row)} is " + (", ".join(parts) if parts else "(no peer measured)")


def _spread(pairs: List[tuple], peer: str) -> str:
    """One peer's (ratio, apart) over the cases in a few words."""
    words = Counter(verdict(*pair) for pair in pairs)
    ratios = [r for r, _ in pairs]
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    span = f"{low}x" if low == high else f"{low}-{high}x"
    n = len(ratios)
    if len(words) == 1:
        word = next(iter(words))
        where = {1: "in the one case", 2: "in both cases"}.get(n, f"in all {n} cases")
        phrase = {"same": "the same as", "unclear": "not clearly different from"}.get(word, word + " than")
        return f"{phrase} {peer} {where} ({span})"
    counts = ", ".join(f"{word} in {words[word]}" for word in ("faster", "same", "slower", "unclear") if words[word])
    return f"vs {peer}: {counts} of {n} cases ({span})"


def _other_line(name: str, per_case: List[Dict]) -> Optional[str]:
    peers = OWN_PEERS.get(name, OTHER_PEERS)
    parts = []
    for p in peers:
        pairs = [_ratios(r, p) for r in per_case if _ratios(r, p)]
        if pairs:
            parts.append(_spread(pairs, PEER_WORDS[p]))
    if not parts:
        return None
    backends = sorted({_label(r).split()[1] for r in per_case})
    return f"  {name} (fused_optim {'/'.join(backends)}): " + "; ".join(parts)


def _left_out(doc: Dict) -> List[str]:
    cut, shortened = doc.get("cut", []), doc.get("shortened", [])
    lines = []
    if cut:
        total = doc["settings"].get("groups", len(cut) + len(doc.get("timeline", [])))
        words = {"not started": "not started within the --time-limit",
                 "not finished": "not finished within the --time-limit",
                 "not measured": f"not measured: {doc.get('interrupted')} stopped the run", "failed": "failed"}
        reasons = Counter(words.get(c["reason"].split(":")[0], c["reason"]) for c in cut)
        lines.append(f"Left out: {len(cut)} of {total} groups ("
                     + ", ".join(f"{n} {why}" for why, n in reasons.items()) + "):")
        by_config: Dict[str, Counter] = {}
        for c in cut:
            by_config.setdefault(f"{c['param_dtype']} params, {c['state_dtype']} states", Counter())[c["case"]] += 1
        for config, cases in by_config.items():
            lines.append(f"  {config}: " + ", ".join(f"{case} ({n} optimizer{'s' * (n > 1)})"
                                                     for case, n in cases.items()))
        first = cut[0]["reason"]
        if "--time-limit" in first:
            lines.append("  (a larger --time-limit, or 0 for none, measures them; so does narrowing --cases, "
                         "--optimizers or --dtype)")
        elif not first.startswith("not measured"):
            lines.append(f"  first reason: {first}")
    if shortened:
        lines.append(f"Shortened: {len(shortened)} group{'s' * (len(shortened) > 1)} stopped timing early "
                     f"({shortened[0]['reason']}); their rows have at least 3 samples each")
    return lines


def summary(doc: Dict) -> str:
    env = doc["environment"]
    rows = doc["rows"]
    lines = [f"fused_optim against its peers on {env['device_name']} ({env['device']}, {env['threads']} threads, "
             f"torch {env['versions']['torch']}).",
             "Ratio = the peer's median step time / ours, both from this run; \"same\": within "
             f"{SAME_BAND:.0%} of 1; \"unclear\": outside it, but the two rows' middle halves of samples overlap."]
    busy = (env.get("other_cpus_busy") or {}).get("during_run")
    load = doc["settings"].get("load")
    if load:
        lines.append(f"Loaded run (--load): {load['busy_processes']} busy-loop processes kept the "
                     f"{env['logical_cpus']} CPUs busy throughout; ours and the peers ran under the same load.")
    elif env["device"] == "cpu" and busy is not None and busy > BUSY_CPUS:
        lines.append(f"WARNING: other processes kept {busy:.2f} of {env['logical_cpus']} CPUs busy during the run; "
                     "parallel regions wait for them, so these CPU timings and ratios are not representative "
                     "(run again on a quiet machine).")
    if doc.get("interrupted"):
        lines.append(f"Interrupted ({doc['interrupted']}): the lines below cover what was measured before.")
    configs = list(dict.fromkeys((r["param_dtype"], r["state_dtype"]) for r in rows))
    for p, s in configs:
        config = {"param_dtype": p, "state_dtype": s}
        mine = [r for r in rows if (r["param_dtype"], r["state_dtype"]) == (p, s)]
        adamw = [(c, _fastest([r for r in mine if r["case"] == c["name"] and r["optimizer"] == "AdamW"]))
                 for c in doc["cases"]]
        adamw = [(c, r) for c, r in adamw if r is not None]
        if adamw:
            lines.append(f"AdamW, {_dtypes(config)}, our fastest backend:")
            lines += [_adamw_line(c, r) for c, r in adamw]
        others = list(dict.fromkeys(r["optimizer"] for r in mine if r["optimizer"] != "AdamW"))
        other_lines = []
        for name in others:
            per_case = [f for f in (_fastest([r for r in mine if r["case"] == c["name"] and r["optimizer"] == name])
                                    for c in doc["cases"]) if f is not None]
            line = _other_line(name, per_case) if per_case else None
            if line:
                other_lines.append(line)
        if other_lines:
            lines.append(f"Other optimizers, {_dtypes(config)}, against their own peers across the cases:")
            lines += other_lines
    if not rows:
        lines.append("Nothing was measured.")
    lines += _left_out(doc)
    return "\n".join(lines)
