/*
 * admin: operators' commands that are awkward in raw SQL, run as
 * subcommands of the binary against the same database and secret:
 *
 *   tokengate key create --user U [--tier T] [--label L] [--expires-days N]
 *   tokengate key revoke (--prefix P | --user U)
 *   tokengate limit set (--user U | --tier T) [--tokens N] [--requests N] [--cost USD]
 *   tokengate usage --user U [--day YYYY-MM-DD]
 *
 * They are safe while the agent runs: the agent sees the change within
 * db_poll_ms. A created key is printed once and stored only as its HMAC.
 */
#ifndef TOKENGATE_ADMIN_H
#define TOKENGATE_ADMIN_H

#include <stdbool.h>

#include "config.h"

/* True if argv[1] names a subcommand; *words is how many argv entries
 * (from 1) are command words. */
bool admin_is_command(int argc, char **argv, int *words);

/* True for the options admin commands take (they are not config keys). */
bool admin_is_option(const char *name);

/* Runs the command; returns the process exit status. */
int admin_run(const struct config *cfg, int default_secret, int argc, char **argv);

#endif
