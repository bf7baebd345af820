"""Facts about the live machine, gathered for the decision core.

Kept apart from `taps_post.decision` so the core stays pure: only the runtime and the
explain CLI (without `--env`) reach in here, and a snapshot file can always stand in for it.
"""
