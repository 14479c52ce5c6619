"""The impression and feedback logs as records: their schemas, their file layout in the store, and the
user-id pseudonyms they carry. A layer below both serving (which writes the logs) and the feedback step
(which reads them)."""
