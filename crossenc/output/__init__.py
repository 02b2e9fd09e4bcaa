"""Output: how scored rows become committed files.

The flow, one module each: :mod:`~crossenc.output.writer` appends scored blocks to right-sized
Parquet files under final, run-unique names and reports each closed file as parts
(:mod:`~crossenc.output.parts`: which rows of which input file it holds);
:mod:`~crossenc.output.journal` is the driver's record of those parts, which a resume reads;
:mod:`~crossenc.output.commit` makes a run the committed one with a single conditional write
and cleans up what it replaced.
"""
