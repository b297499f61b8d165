"""What `strokelesion batch` shows: the cases' progress on stderr and the summary table it prints."""
import contextlib
import sys


@contextlib.contextmanager
def cases_progress():
    """Yields a callable(done, failed, running, total) for `batch`: on a terminal a tqdm bar of the cases ended,
    with the counts done, failed, running and queued beside it; elsewhere a plain line whenever they change."""
    bar, shown = [], [None]

    def update(done, failed, running, total):
        counts = (done, failed, running, total - done - failed - running)
        text = "done {}, failed {}, running {}, queued {}".format(*counts)
        if not sys.stderr.isatty():
            if counts != shown[0]:
                shown[0] = counts
                print(f"cases: {text}", file=sys.stderr, flush=True)
            return
        if not bar:
            from tqdm import tqdm
            bar.append(tqdm(total=total, desc="cases", unit="case", leave=False, file=sys.stderr))
        bar[0].n = done + failed
        bar[0].set_postfix_str(text, refresh=True)
    try:
        yield update
    finally:
        if bar:
            bar[0].close()


def _cell(value) -> str:
    """A table cell: '-' for a value that is not there (no lesion model, no mismatch without a core)."""
    return "-" if value is None or value == "" else str(value)


def format_summary_table(rows) -> str:
    """batch's printed table: one line per case, its status, volumes (ml), mismatch, lesion, AIF flags and
    seconds, or its one-line error."""
    head = ("case", "status", "core", "penumbra", "mismatch", "lesion", "AIF flags", "s")
    lines = [head]
    for r in rows:
        if r["status"] == "done":
            lines.append((r["case_id"], r["status"], *(_cell(r[k]) for k in (
                "core_ml", "penumbra_ml", "mismatch_ratio", "lesion_ml", "aif_quality_flags", "seconds"))))
        else:
            lines.append((r["case_id"], r["status"], r["error"]))
    widths = [max(len(line[i]) for line in lines if len(line) == len(head) and i < len(line))
              for i in range(len(head))]
    out = []
    for line in lines:
        cells = line if len(line) == len(head) else line[:2]
        text = "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()
        out.append(text if len(line) == len(head) else f"{text}  {line[2]}")
    return "\n".join(out)
