/* admin: key, limit and usage subcommands (see admin.h). */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "daytime.h"
#include "store.h"

static const char *const options[] = {"user", "tier", "label", "expires-days", "prefix",
				      "tokens", "requests", "cost", "day"};

bool admin_is_command(int argc, char **argv, int *words)
{
	if (argc < 2)
		return false;
	if (!strcmp(argv[1], "key") || !strcmp(argv[1], "limit")) {
		/* A missing subcommand word is reported by admin_run. */
		*words = argc > 2 && argv[2][0] != '-' ? 2 : 1;
		return true;
	}
	if (!strcmp(argv[1], "usage")) {
		*words = 1;
		return true;
	}
	return false;
}

bool admin_is_option(const char *name)
{
	for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
		if (!strcmp(name, options[i]))
			return true;
	return false;
}

/* The value of --name in argv, or NULL. */
static const char *opt(int argc, char **argv, const char *name)
{
	size_t n = strlen(name);

	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--", 2) || strncmp(argv[i] + 2, name, n))
			continue;
		if (argv[i][2 + n] == '=')
			return argv[i] + 3 + n;
		if (argv[i][2 + n] == '\0' && i + 1 < argc)
			return argv[i + 1];
	}
	return NULL;
}

static int usage_error(const char *msg)
{
	fprintf(stderr, "tokengate: %s (see tokengate --help)\n", msg);
	return 2;
}

static int fail(const char *what, const char *err)
{
	fprintf(stderr, "tokengate: %s: %s\n", what, err);
	return 1;
}

/* fail(), after undoing the transaction the command began. */
static int rollback(struct store *s, const char *what, const char *err)
{
	char ignored[64];

	store_exec_params(s, "ROLLBACK", NULL, 0, NULL, ignored, sizeof(ignored));
	return fail(what, err);
}

static void iso_in_days(long days, char *buf, size_t size)
{
	time_t t = time(NULL) + days * 86400;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int key_create(struct store *s, int argc, char **argv)
{
	const char *user = opt(argc, argv, "user"), *tier = opt(argc, argv, "tier");
	const char *label = opt(argc, argv, "label"), *days = opt(argc, argv, "expires-days");
	char key[64], hmac[CRYPTO_HMAC_HEX_LEN + 1], prefix[9], expires[32], err[256];
	const char *p[6];

	if (!user || !user[0])
		return usage_error("key create needs --user");
	if (days && atol(days) <= 0)
		return usage_error("--expires-days must be a positive number of days");
	if (crypto_new_key(key, sizeof(key)) == -1)
		return fail("key create", "no randomness");
	crypto_key_hmac(key, strlen(key), hmac);
	memcpy(prefix, key, 8);
	prefix[8] = '\0';
	if (days)
		iso_in_days(atol(days), expires, sizeof(expires));
	/* The user gets a row (default tier) so that audits list it; with the
	 * key, in one transaction, so that a refusal leaves neither. */
	if (store_exec_params(s, "BEGIN IMMEDIATE", NULL, 0, NULL, err, sizeof(err)) == -1)
		return fail("key create", err);
	p[0] = user;
	if (store_exec_params(s,
			      "INSERT INTO users(user_id, tier) VALUES (?1, (SELECT value FROM settings WHERE "
			      "name = 'default_tier')) ON CONFLICT(user_id) DO NOTHING",
			      p, 1, NULL, err, sizeof(err)) == -1)
		return rollback(s, "key create", err);
	p[0] = hmac;
	p[1] = prefix;
	p[2] = user;
	p[3] = tier;
	p[4] = label;
	p[5] = days ? expires : NULL;
	if (store_exec_params(s,
			      "INSERT INTO api_keys(key_hmac, key_prefix, user_id, tier, label, expires_at) "
			      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
			      p, 6, NULL, err, sizeof(err)) == -1 ||
	    store_exec_params(s, "COMMIT", NULL, 0, NULL, err, sizeof(err)) == -1)
		return rollback(s, "key create", err);
	/* The only time the key exists outside the client's hands. */
	printf("%s\n", key);
	fprintf(stderr, "key %s... for user %s%s%s created; it is shown once and stored only as its HMAC\n",
		prefix, user, tier ? ", tier " : "", tier ? tier : "");
	return 0;
}

static int key_revoke(struct store *s, int argc, char **argv)
{
	const char *prefix = opt(argc, argv, "prefix"), *user = opt(argc, argv, "user");
	const char *p[2] = {prefix, user};
	char err[256];
	int n = 0;

	if (!prefix == !user)
		return usage_error("key revoke needs --prefix or --user (one of them)");
	if (store_exec_params(s,
			      "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') "
			      "WHERE revoked_at IS NULL AND (key_prefix = ?1 OR user_id = ?2)",
			      p, 2, &n, err, sizeof(err)) == -1)
		return fail("key revoke", err);
	printf("%d key%s revoked\n", n, n == 1 ? "" : "s");
	return n > 0 ? 0 : 1;
}

static int limit_set(struct store *s, int argc, char **argv)
{
	const char *user = opt(argc, argv, "user"), *tier = opt(argc, argv, "tier");
	const char *p[4] = {user ? user : tier, opt(argc, argv, "tokens"), opt(argc, argv, "requests"),
			    opt(argc, argv, "cost")};
	char err[256];
	int n = 0;

	if (!user == !tier)
		return usage_error("limit set needs --user or --tier (one of them)");
	if (!p[1] && !p[2] && !p[3])
		return usage_error("limit set needs --tokens, --requests or --cost");
	/* Typed binds through CAST so that the schema's checks see numbers;
	 * "none" lifts a limit (NULL). */
	if (user) {
		if (store_exec_params(s,
				      "INSERT INTO user_limits(user_id, daily_tokens, daily_requests, daily_cost_usd) "
				      "VALUES (?1, CASE WHEN ?2 = 'none' THEN NULL ELSE CAST(?2 AS INTEGER) END, "
				      "CASE WHEN ?3 = 'none' THEN NULL ELSE CAST(?3 AS INTEGER) END, "
				      "CASE WHEN ?4 = 'none' THEN NULL ELSE CAST(?4 AS REAL) END) "
				      "ON CONFLICT(user_id) DO UPDATE SET "
				      "daily_tokens = CASE WHEN ?2 IS NULL THEN daily_tokens ELSE excluded.daily_tokens END, "
				      "daily_requests = CASE WHEN ?3 IS NULL THEN daily_requests ELSE excluded.daily_requests END, "
				      "daily_cost_usd = CASE WHEN ?4 IS NULL THEN daily_cost_usd ELSE excluded.daily_cost_usd END, "
				      "updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')",
				      p, 4, &n, err, sizeof(err)) == -1)
			return fail("limit set", err);
	} else {
		if (store_exec_params(s,
				      "UPDATE tiers SET "
				      "daily_tokens = CASE WHEN ?2 IS NULL THEN daily_tokens WHEN ?2 = 'none' THEN NULL "
				      "ELSE CAST(?2 AS INTEGER) END, "
				      "daily_requests = CASE WHEN ?3 IS NULL THEN daily_requests WHEN ?3 = 'none' THEN NULL "
				      "ELSE CAST(?3 AS INTEGER) END, "
				      "daily_cost_usd = CASE WHEN ?4 IS NULL THEN daily_cost_usd WHEN ?4 = 'none' THEN NULL "
				      "ELSE CAST(?4 AS REAL) END WHERE name = ?1",
				      p, 4, &n, err, sizeof(err)) == -1)
			return fail("limit set", err);
		if (n == 0)
			return fail("limit set", "no such tier");
	}
	printf("limits of %s %s updated\n", user ? "user" : "tier", p[0]);
	return 0;
}

static int usage_show(struct store *s, int argc, char **argv)
{
	const char *user = opt(argc, argv, "user"), *day = opt(argc, argv, "day");
	const char *p[2];
	char err[256];
	int rows;

	if (!user)
		return usage_error("usage needs --user");
	p[0] = user;
	p[1] = day;
	rows = store_print_rows(s,
				"SELECT * FROM user_history WHERE user_id = ?1 AND day = COALESCE(?2, "
				"(SELECT value FROM agent_state WHERE name = 'current_day'), date('now'))",
				p, 2, stdout, err, sizeof(err));
	if (rows == -1)
		return fail("usage", err);
	if (rows == 0) {
		printf("no usage recorded for %s on %s; limits in force:\n", user, day ? day : "the current day");
		if (store_print_rows(s, "SELECT * FROM limits_in_force WHERE user_id = ?1", p, 1, stdout, err,
				     sizeof(err)) == 0)
			printf("(no row: the default tier applies)\n");
	}
	return 0;
}

int admin_run(const struct config *cfg, int default_secret, int argc, char **argv)
{
	char err[512];
	struct store *s;
	int rc;

	if (crypto_load_secret(cfg->secret_file, default_secret, err, sizeof(err)) == -1)
		return fail("secret", err);
	s = store_open(cfg->db, err, sizeof(err));
	if (!s)
		return fail("database", err);
	if (argc < 3 || argv[2][0] == '-')
		rc = strcmp(argv[1], "usage") ? usage_error("missing subcommand (create, revoke, set)") : usage_show(s, argc, argv);
	else if (!strcmp(argv[1], "key") && !strcmp(argv[2], "create"))
		rc = key_create(s, argc, argv);
	else if (!strcmp(argv[1], "key") && !strcmp(argv[2], "revoke"))
		rc = key_revoke(s, argc, argv);
	else if (!strcmp(argv[1], "limit") && !strcmp(argv[2], "set"))
		rc = limit_set(s, argc, argv);
	else if (!strcmp(argv[1], "usage"))
		rc = usage_show(s, argc, argv);
	else
		rc = usage_error("unknown command");
	store_close(s, 0);
	crypto_forget();
	return rc;
}
