"""The impression and feedback logs as records: their schemas, their file layout in the store, and the
user-id pseudonyms they carry. Below both serving (which writes the logs) and the feedback step (which
reads them); imports only config, store and errors."""
