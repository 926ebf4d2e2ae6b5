"""The scan report: what :func:`mbt.data.layouts.scan` found, kept and left out, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScanReport:
    """What :func:`mbt.data.layouts.scan` found, kept and left out; ``format()`` is printed
    before training."""

    root: str
    layout: str  # the format's NAME, e.g. "pjzuf" or "csv (AudioSet segments)"
    clips_found: int = 0  # candidate clips before anything was left out
    classes: int = 0
    split_sizes: dict[str, int] = field(default_factory=dict)
    no_audio: list[str] = field(default_factory=list)  # neither an audio file nor a track
    missing_audio_policy: str = "skip"
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    unpaired_audio: list[str] = field(default_factory=list)  # audio files without a video
    unpaired_video: list[str] = field(default_factory=list)  # videos without an audio file
    missing: list[str] = field(default_factory=list)  # listed in a manifest, not on disk
    dropped_classes: list[str] = field(default_factory=list)  # no clip left: not in the head
    silent_classes: list[str] = field(default_factory=list)  # clips, but none with any sound
    merged_classes: list[str] = field(default_factory=list)  # "Kept = Other": case-only twins
    notes: list[str] = field(default_factory=list)

    def format(self, max_items: int = 5) -> str:
        """A readable table with counts and the first ``max_items`` files of each problem."""
        rows = self._rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        silent = set(self.silent_classes)
        details = [
            ("without audio", self.no_audio, max_items),
            ("unreadable", [f"{p}: {why}" for p, why in self.unreadable], max_items),
            ("audio without video", self.unpaired_audio, max_items),
            ("missing", self.missing, max_items),
            # Class lists are short and are what a user checks: listed in full.
            ("classes without audio", self.silent_classes, None),
            ("dropped classes", [n for n in self.dropped_classes if n not in silent], None),
            ("classes merged (names differ only in case)", self.merged_classes, None),
        ]
        for title, items, limit in details:
            if items:
                shown = items if limit is None else items[:limit]
                more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
                lines.append(f"{title}: " + "; ".join(shown) + more)
        lines.extend(self.notes)
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, str]]:
        """(name, value) rows of the summary table."""
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        policy = {"skip": "skipped", "silence": "kept with silent audio", "error": "error"}
        found = self.classes + len(self.dropped_classes)
        of_found = f" (of {found} found)" if self.dropped_classes else ""
        rows = [
            ("data set", f"{self.root} (layout {self.layout})"),
            ("clips found", str(self.clips_found)),
            ("classes", f"{self.classes}{of_found}"),
            ("splits", sizes or "-"),
            ("without audio", f"{len(self.no_audio)} ({policy[self.missing_audio_policy]})"),
            ("unreadable files", f"{len(self.unreadable)} (left out)"),
            ("videos without audio file", f"{len(self.unpaired_video)} (use their own track)"),
            ("audio without video", f"{len(self.unpaired_audio)} (ignored)"),
            ("missing files", f"{len(self.missing)} (skipped)"),
        ]
        if self.silent_classes:
            dropped = set(self.silent_classes) <= set(self.dropped_classes)
            what = (
                "dropped from the head" if dropped
                else "kept with silent audio" if self.missing_audio_policy == "silence"
                else "kept"
            )  # fmt: skip
            rows.append(("classes without audio", f"{len(self.silent_classes)} ({what})"))
        others = [n for n in self.dropped_classes if n not in set(self.silent_classes)]
        if others:
            rows.append(("classes without clips", f"{len(others)} (dropped from the head)"))
        return rows
