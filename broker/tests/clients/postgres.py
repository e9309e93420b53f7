"""psycopg (the extended query protocol) against Weir's Postgres listener: a bound parameter,
the statements Grafana's Postgres data source sends (its health check, its version detection,
its lists of tables and columns) and a Grafana time-series query with its macros expanded.
Prints one `name=value` line per answer.

usage: postgres.py HOST PORT PASSWORD
"""

import sys

import psycopg

# Grafana's `$__schemaConstraint`: the schemas on the search path.
SEARCH_PATH_SCHEMAS = """
    SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM generate_series(
        array_lower(string_to_array(current_setting('search_path'), ','), 1),
        array_upper(string_to_array(current_setting('search_path'), ','), 1)
    ) AS i,
    string_to_array(current_setting('search_path'), ',') s
"""

TABLES = f"""
    SELECT quote_ident(table_name) AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog',
        '_timescaledb_cache', '_timescaledb_catalog', '_timescaledb_internal',
        '_timescaledb_config', 'timescaledb_information', 'timescaledb_experimental')
      AND table_type = 'BASE TABLE'
      AND quote_ident(table_schema) IN ({SEARCH_PATH_SCHEMAS})
    ORDER BY 1
"""

COLUMNS = f"""
    SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE quote_ident(table_name) = 'logs'
      AND quote_ident(table_schema) IN ({SEARCH_PATH_SCHEMAS})
    ORDER BY 1
"""

# `$__timeGroupAlias("timestamp", 1m)` and `$__timeFilter("timestamp")` as Grafana expands them.
TIME_SERIES = """
    SELECT floor(extract(epoch from "timestamp") / 60) * 60 AS "time",
           count(*) AS "requests"
    FROM logs
    WHERE "timestamp" BETWEEN '2023-11-14T22:14:00Z' AND '2023-11-14T22:24:00Z'
    GROUP BY 1
    ORDER BY 1
"""


def main():
    host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with psycopg.connect(
        host=host, port=port, user="weir", dbname="weir", password=password, connect_timeout=10
    ) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM logs WHERE status >= %s AND host = %s", (500, "web-1"))
            print(f"errors_web_1={cur.fetchone()[0]}")

            cur.execute("SELECT 1")
            print(f"health={cur.fetchone()[0]}")

            # Grafana's version detection.
            cur.execute("SELECT current_setting('server_version_num')::int/100 AS version")
            print(f"version={cur.fetchone()[0]}")

            cur.execute(TABLES)
            print("tables=" + ",".join(row[0] for row in cur.fetchall()))

            cur.execute(COLUMNS)
            print("columns=" + ",".join(f"{name}:{kind}" for name, kind in cur.fetchall()))

            cur.execute(TIME_SERIES)
            print("series=" + ",".join(f"{int(t)}:{n}" for t, n in cur.fetchall()))

            try:
                cur.execute("SELECT missing_column FROM logs")
                print("error=none")
            except psycopg.Error as e:
                print(f"error={type(e).__name__}: {str(e).splitlines()[0]}")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM logs")
            print(f"after_error={cur.fetchone()[0]}")


if __name__ == "__main__":
    main()
