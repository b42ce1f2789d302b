"""The department's pages under /app/: server-rendered (Jinja2) with htmx, behind the viewer's
login and session cookie, every action through the services the API calls."""
