"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from crossenc.config import JobConfig, build_config


def job_config(
    input_path: Path | str, output_path: Path | str, model_path: Path | str, **sections: Any
) -> JobConfig:
    """A validated config over the sample pairs, with sections merged in."""
    data: dict[str, Any] = {
        "input": {
            "path": str(input_path),
            "text_a": "query",
            "text_b": "passage",
            "keep": ["qid", "doc_id"],
        },
        # float32: the tests compare scores with float32 references (dtype auto would run
        # bfloat16 on a CPU with AMX); tests of auto set it themselves
        "model": {"name": str(model_path), "dtype": "float32"},
        "output": {"path": str(output_path)},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(data)


def read_output(path: Path | str) -> pa.Table:
    """Every committed output row (Parquet readers skip _-prefixed paths)."""
    return pads.dataset(str(path), format="parquet").to_table()


def read_input(path: Path | str) -> pa.Table:
    """Every input row."""
    return pq.read_table(str(path))
