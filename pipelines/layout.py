"""Where a job keeps its files.

``--out w/``          parts in ``w/<shard stem>.parquet``
``--out w.parquet``   parts in ``w.parts/``, merged into ``w.parquet`` at the end

Job state lives in ``<parts dir>/_nclean/`` (the fitted statistics, and the
embedding cache unless ``--cache`` says otherwise). Names starting with ``_``
are skipped by pyarrow/pandas dataset readers, so ``pd.read_parquet("w/")``
sees only the parts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cleaner.errors import ConfigError


@dataclass
class OutputLayout:
    out: Path
    parts_dir: Path
    merged: Path | None

    @classmethod
    def from_out(cls, out: str | Path) -> OutputLayout:
        out = Path(out)
        if out.suffix == ".parquet":
            return cls(out=out, parts_dir=out.with_suffix(".parts"), merged=out)
        return cls(out=out, parts_dir=out, merged=None)

    @property
    def state_dir(self) -> Path:
        return self.parts_dir / "_nclean"

    @property
    def fit_path(self) -> Path:
        return self.state_dir / "fit.json"

    @property
    def default_cache(self) -> Path:
        return self.state_dir / "embeddings"

    def part_path(self, stem: str) -> Path:
        return self.parts_dir / f"{stem}.parquet"

    def prepare(self, overwrite: bool) -> None:
        """Create folders, check they are writable, clear old results on overwrite."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self.merged is not None:
                self.merged.parent.mkdir(parents=True, exist_ok=True)
            for d in {self.parts_dir, self.merged.parent if self.merged else self.parts_dir}:
                fd, probe = tempfile.mkstemp(prefix=".nclean-probe-", dir=d)
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"output location {self.out} is not writable: {exc.strerror or exc}"
            ) from None
        if overwrite:
            for p in self.parts_dir.glob("*.parquet"):
                p.unlink()
            if self.fit_path.exists():
                self.fit_path.unlink()
            if self.default_cache.exists():
                shutil.rmtree(self.default_cache)
            if self.merged is not None and self.merged.exists():
                self.merged.unlink()
