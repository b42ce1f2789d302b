-- Runs once, when the postgres service initialises an empty data volume (the postgres image runs
-- /docker-entrypoint-initdb.d/* only then). Changing this file later does nothing to an existing
-- volume: create a missing database by hand with `CREATE DATABASE ... OWNER ...`.
--
-- One server, two databases: Orthanc's index (written only by Orthanc's PostgreSQL plugin, whose
-- schema it manages itself) and the sidecar's (managed by the sidecar's Alembic migrations).
-- Keeping them apart means neither migration tool can ever see, or drop, the other's tables.
-- Both are owned by POSTGRES_USER, the role docker-compose.yml gives both services.
CREATE DATABASE orthanc;
CREATE DATABASE sidecar;
