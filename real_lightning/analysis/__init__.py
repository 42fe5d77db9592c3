"""Reading runs: gradient allocation statistics, evaluation tables, Pass@k, plots."""
