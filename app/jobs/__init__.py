"""Batch jobs: a target list in, one prediction (or the reason there is none) per row out.

``store`` writes and reads jobs in the database, ``chunk`` answers one chunk of a job (the
unit of work everywhere), ``executors`` run chunks in-process or on Celery workers,
``recovery`` finds lost chunks, and ``service`` is what the API calls.
"""
