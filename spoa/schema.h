#ifndef TOKENGATE_SCHEMA_H
#define TOKENGATE_SCHEMA_H

/*
 * The SQL migrations in schema/NNN_*.sql, embedded at build time by
 * schema/embed.sh. Ordered by version (1, 2, ...). At start the agent applies,
 * each in its own transaction, every migration whose version is greater than
 * PRAGMA user_version, then sets user_version to that version in the same
 * transaction. The files hold no BEGIN/COMMIT and no PRAGMA user_version.
 */
struct schema_migration {
    unsigned version;   /* NNN from the file name */
    const char *name;   /* file name, e.g. "001_init.sql" */
    const char *sql;    /* the whole file, for sqlite3_exec() */
};

extern const struct schema_migration schema_migrations[];
extern const unsigned schema_migration_count;

#endif
