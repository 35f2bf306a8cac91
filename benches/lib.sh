# Shared by the bench scripts (sourced, not run).

# The last training step of a run directory's metrics.csv (the monitor's kNN and gauge rows are
# not steps).
last_step() {
    awk -F, 'NR > 1 && $3 != "knn" && $3 != "gauges" { s = $1 } END { print s + 0 }' "$1/metrics.csv"
}

# "CPU model, N cores", for every report.
cpu_line() {
    echo "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
}
