"""`latigo web`: a read-only status page served from latigo's database.

Pipeline health (backlog, oldest queued task, throughput, failures by reason, executors seen), one row per
model (last predicted window, lateness, newest task, latest total-anomaly-confidence with a 24-hour
sparkline, models above the threshold first) and a page per model (its tags' anomaly scores over time, its
last tasks). Server-rendered HTML with inline SVG, refreshed by the browser every 30 s; no script.

`queries` holds the reads (bounded, indexed, on a read-only engine), `render` the HTML and SVG (every
database text escaped), `server` the HTTP server, the token check and the routes.
"""
