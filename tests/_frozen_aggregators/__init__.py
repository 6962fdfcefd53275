"""A frozen copy of fedlib.aggregators (fedlib 0.x, before batching): the reference that
unbatched calls must still match bit for bit. Do not edit."""
