"""The operator's console: server-rendered pages on the admin listener, at /console (app.py
the pages, auth.py the session cookie and CSRF, overview.py the live numbers, charts.py the
GGR chart; the SQL of the reports in persistence/reports.py)."""
