/*
 * politevfs: SQLite's default VFS with a hook called before every write.
 *
 * SQLite writes a transaction's pages at COMMIT, and a checkpoint copies
 * them into the database, each as one uninterrupted run of pwrite calls:
 * a flush of a few hundred users was 1.5-2 ms of writes in a row, during
 * which a thread woken on the same CPU (the event loop, HAProxy) waited.
 * The store's hook offers the CPU between those writes (store.c,
 * offer_cpu). Everything else is the real VFS's, unchanged.
 */
#ifndef TOKENGATE_POLITEVFS_H
#define TOKENGATE_POLITEVFS_H

/* Registers the VFS as SQLite's default, wrapping the current default;
 * again: only replaces the hook. 0, or -1 if SQLite refuses. */
int politevfs_register(void (*hook)(void));

#endif
