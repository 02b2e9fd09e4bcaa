"""The job as its phases (run_job.py lists them, one module each), the Ray Data dataflow of a score
pass (dataflow.py), Ray start-up (cluster.py), and what a run reports (summary, report, result)."""
