"""Batches (``/v1/batches``): input files read line by line, run by a background worker through
the same request path as live requests, their answers written to output and error files."""
