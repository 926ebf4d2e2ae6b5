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
    dropped_classes: list[str] = field(default_factory=list)  # require_audio: no clip left
    notes: list[str] = field(default_factory=list)

    def format(self, max_items: int = 5) -> str:
        """A readable table with counts and the first ``max_items`` files of each problem."""
        rows = self._rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        details = [
            ("without audio", self.no_audio),
            ("unreadable", [f"{p}: {why}" for p, why in self.unreadable]),
            ("audio without video", self.unpaired_audio),
            ("missing", self.missing),
            ("dropped classes", self.dropped_classes),
        ]
        for title, items in details:
            if items:
                more = f" ... and {len(items) - max_items} more" if len(items) > max_items else ""
                lines.append(f"{title}: " + "; ".join(items[:max_items]) + more)
        lines.extend(self.notes)
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, str]]:
        """(name, value) rows of the summary table."""
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        policy = {"skip": "skipped", "silence": "kept with silent audio", "error": "error"}
        rows = [
            ("data set", f"{self.root} (layout {self.layout})"),
            ("clips found", str(self.clips_found)),
            ("classes", str(self.classes)),
            ("splits", sizes or "-"),
            ("without audio", f"{len(self.no_audio)} ({policy[self.missing_audio_policy]})"),
            ("unreadable files", f"{len(self.unreadable)} (left out)"),
            ("videos without audio file", f"{len(self.unpaired_video)} (use their own track)"),
            ("audio without video", f"{len(self.unpaired_audio)} (ignored)"),
            ("missing files", f"{len(self.missing)} (skipped)"),
        ]
        if self.dropped_classes:
            rows.append(("classes without audio", f"{len(self.dropped_classes)} (dropped)"))
        return rows
