"""The operators' dashboard (`etl dashboard`): a small server beside the queue, reading what Redis
already holds, with no database of its own (as SAQ's `saq/web/` and rq-dashboard do).

`app.py` builds the Starlette app and its routes; `pages.py` renders the HTML pages (Jinja2, in
`templates/`), `api.py` the JSON API under /api/, `actions.py` the POSTs (retry, cancel, sign in);
`queries.py` reads Redis, a bounded amount per page; `details.py` assembles one job's page;
`files.py` serves export files from inside ETL_EXPORT_DIR only; `auth.py` holds the token, session
and CSRF checks; `views.py` formats; `server.py` runs uvicorn. `static/live.js` refreshes the live
parts of a page in place; there is no JavaScript build.
"""
