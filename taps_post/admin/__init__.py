"""Administrator tools: `taps-post policy test` (scenario files) and `policy diff`.

Rule 1: this package sits on top (architecture rank 7): it may import anything below it and
nothing below imports it, so the CLI loads it lazily, only for the commands that need it.
"""
