"""Pure protocol parsers: bytes in, (status, ...) out; no I/O, no exceptions
for bad input.

Every parser returns a tuple whose first item is one of these statuses.
"""

PARSED = 0      # a complete record was parsed
NEED_MORE = 1   # the bytes so far are a valid prefix: wait for more
INVALID = 2     # the bytes cannot be this protocol; the last item says why
