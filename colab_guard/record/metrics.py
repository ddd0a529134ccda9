"""Prometheus metrics, served on the Jupyter server's own /metrics."""

from prometheus_client import Counter, Gauge, Histogram

INCIDENTS = Counter("colab_guard_incidents_total", "Incidents recorded, by category and action "
                    "(dry-run incidents have action 'dry-run').", ["category", "action"])
OFFENCES_COALESCED = Counter("colab_guard_offences_coalesced_total",
                             "Offences of a kernel past its burst of incidents, acted on at once "
                             "and recorded together in one incident per kernel and window, by "
                             "category (a log line names the incident).", ["category"])
ATTRIBUTIONS = Counter("colab_guard_attributions_total",
                       "Processes first seen outside every kernel's tree, tied by how: session "
                       "(in a kernel's session), environment (the marker, agreeing with what is "
                       "known), unproven (the user's, kernel unknown: stopped, no kernel "
                       "interrupted).", ["how"])
KERNELS_MONITORED = Gauge("colab_guard_kernels_monitored", "Kernels the guard is watching now.")
PROCESSES_SAMPLED = Counter("colab_guard_processes_sampled_total",
                            "Processes read by the sampler, summed over ticks.")
PROCESSES_READ_IN_FULL = Counter("colab_guard_processes_read_in_full_total",
                                 "Of the processes sampled, those read in full (new, changed, "
                                 "or due their refresh); the others were read lightly or had "
                                 "not run, so their last read stood.")
PROCESSES_READ_LIGHTLY = Counter("colab_guard_processes_read_lightly_total",
                                 "Of the processes sampled, those that ran but changed nothing "
                                 "but their CPU and memory use (stat, command line and fd "
                                 "count read; the rest kept from their last full read).")
SAMPLE_DURATION = Histogram("colab_guard_sample_duration_seconds",
                            "Time one tick takes: sampling every kernel, detecting, acting.",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SAMPLER_ERRORS = Counter("colab_guard_sampler_errors_total",
                         "Problems while sampling: vanished processes, denied reads, failures.",
                         ["kind"])
SAMPLER_TRACKED = Gauge("colab_guard_sampler_tracked",
                        "Processes the sampler keeps state for (attribution, CPU, libraries); "
                        "bounded by the live processes, since an exited one is forgotten.")
TICKS_MISSED = Counter("colab_guard_ticks_missed_total",
                       "Ticks skipped because the previous one ran past the interval.")
RECORD_ERRORS = Counter("colab_guard_record_errors_total",
                        "Failed writes of the incident log (retried at every tick).")
KERNEL_STARTS_REFUSED = Counter("colab_guard_kernel_starts_refused_total",
                                "Kernel starts refused because the user reached strike_limit.")
KERNEL_EVENTS_DROPPED = Counter("colab_guard_kernel_events_dropped_total",
                                "Events the kernel hook dropped because its queue was full "
                                "(reported by the kernels).")
KERNEL_CODE_UNCHECKED = Counter("colab_guard_kernel_code_unchecked_total",
                                "Pieces of code run in a kernel at run time (exec, compile) "
                                "not checked because the kernel was over its check budget, or "
                                "nested too deeply to read.")
KERNEL_CHANNEL_REFUSED = Counter("colab_guard_kernel_channel_refused_total",
                                 "Connections to the kernel channel refused (bad token, "
                                 "a process that is not the kernel's, malformed hello).")
EVENTS_REFUSED = Counter("colab_guard_events_refused_total",
                         "Incident events the server's event bus refused (the incident is still "
                         "recorded; the frontend is not told).")
CONTENT_SCANS = Counter("colab_guard_content_scans_total",
                        "What the content scanner did, by outcome: file_scans and memory_scans "
                        "done, library_looks (a process's mapped files read); cut (past a time or byte budget), refused (not a regular file), "
                        "dropped (queue full; asked again later), memory_denied, vanished.",
                        ["outcome"])
WATCH_HEARTBEAT = Gauge("colab_guard_watch_heartbeat_timestamp_seconds",
                        "The node watcher's last tick (Unix time): stale means it is stuck.")
WATCH_PROC_EVENTS = Counter("colab_guard_watch_proc_events_total",
                            "Process events the node watcher read from the kernel's proc "
                            "connector, by kind (fork, exec, exit; overrun: some were lost).",
                            ["kind"])
WATCH_SWITCHES_LOST = Counter("colab_guard_watch_switch_records_lost_total",
                              "Passes at which the node watcher lost context-switch records "
                              "(more switches than its buffers hold): the quiet processes "
                              "were asked in turn, as without them.")
HUB_REPORTS = Counter("colab_guard_hub_reports_total",
                      "Incidents reported to the hub service, by outcome: sent (taken), refused "
                      "(HTTP 400/401/403: not retried), dropped (the queue was full: the oldest "
                      "went unreported).", ["outcome"])
HUB_REPORTS_QUEUED = Gauge("colab_guard_hub_reports_queued",
                           "Incidents waiting to be sent to the hub service (on disk).")
HUB_REPORT_ERRORS = Counter("colab_guard_hub_report_errors_total",
                            "Failed attempts to reach the hub service (connection refused, "
                            "timeout, 5xx): retried with backoff.")
