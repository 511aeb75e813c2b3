"""The gocryptfs v2 on-disk format, pure (bytes in, values out; no files, sockets or event loop).

Spec: upstream ``Documentation/file-format.md``; notes with exact constants in
``shared/reference/cachefs.md`` §1-2. The real ``gocryptfs`` binary is the test oracle.
"""
