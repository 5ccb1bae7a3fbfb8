// SPDX-License-Identifier: MIT
/*
 * The runner behind tests/shim/criterion/criterion.h: each registered test in
 * its own forked child, with a timeout; one line per test, then a summary.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT 300 /* seconds, per test */

/*
 * What a test's child leaves for the runner, in a shared mapping so that it
 * survives however the child ends (and a fork inside the test shares it).
 */
struct outcome {
	int failed;        /* checks that failed; atomic: any thread may fail one */
	int skipped;
	int finished;      /* the child got through init, body and fini */
	char reason[256];  /* why it was skipped */
};

static struct cr_shim_test *registry;
static size_t nregistered;

static struct outcome *outcome;

/* In the child: who may jump back into the runner, and where to. */
static pid_t test_pid;
static pthread_t test_thread;
static jmp_buf test_jmp;

/* In the runner: the child that SIGALRM kills. */
static volatile pid_t child_pid;
static volatile sig_atomic_t timed_out;

void cr_shim_register_(struct cr_shim_test *t)
{
	t->next = registry;
	registry = t;
	nregistered++;
}

/* ---------------------------------------------------------------- child */

/*
 * Leave the test: back into the runner from the test's own thread (fini
 * still runs); from another thread, or a process the test forked, the only
 * way out is to end that process.
 */
__attribute__((noreturn)) static void leave_test(int status)
{
	if (getpid() == test_pid && pthread_equal(pthread_self(), test_thread))
		longjmp(test_jmp, 1);
	fflush(NULL);
	_exit(status);
}

static void vreport(const char *what, const char *file, int line, const char *expr,
		    const char *left, const char *right, const char *fmt, va_list ap)
{
	flockfile(stderr);
	fprintf(stderr, "[----] %s:%d: %s: %s\n", file, line, what, expr);
	if (left)
		fprintf(stderr, "[----]   left:  \"%s\"\n[----]   right: \"%s\"\n", left, right);
	if (fmt[1]) { /* past the dummy "x" */
		fputs("[----]   ", stderr);
		vfprintf(stderr, fmt + 1, ap);
		fputc('\n', stderr);
	}
	funlockfile(stderr);
	__atomic_fetch_add(&outcome->failed, 1, __ATOMIC_SEQ_CST);
}

void cr_shim_abort_(const char *file, int line, const char *expr, const char *left,
		    const char *right, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("Assertion failed", file, line, expr, left, right, fmt, ap);
	va_end(ap);
	leave_test(1);
}

void cr_shim_continue_(const char *file, int line, const char *expr, const char *left,
		       const char *right, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("Expectation failed", file, line, expr, left, right, fmt, ap);
	va_end(ap);
}

void cr_shim_skip_(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(outcome->reason, sizeof(outcome->reason), fmt + 1, ap);
	va_end(ap);
	if (!outcome->reason[0])
		snprintf(outcome->reason, sizeof(outcome->reason), "at %s:%d", file, line);
	__atomic_store_n(&outcome->skipped, 1, __ATOMIC_SEQ_CST);
	leave_test(0);
}

void cr_shim_log_(const char *level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	flockfile(stderr);
	fprintf(stderr, "[----] %s: ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	funlockfile(stderr);
	va_end(ap);
}

/* init, body and fini; a failed assertion or a skip ends the stage it is in. */
__attribute__((noreturn)) static void run_child(const struct cr_shim_test *t, pid_t runner)
{
	volatile bool init_done = false;

	signal(SIGALRM, SIG_DFL);
	/* Dies with the runner, however the runner dies. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != runner)
		_exit(127);
	test_pid = getpid();
	test_thread = pthread_self();
	if (!setjmp(test_jmp)) {
		if (t->init)
			t->init();
		init_done = true;
		t->fn();
	}
	if (init_done && t->fini && !setjmp(test_jmp))
		t->fini();
	outcome->finished = 1;
	/* exit(), not _exit(): sanitizers report at exit, and set the status. */
	exit(0);
}

/* ---------------------------------------------------------------- runner */

static void on_alarm(int sig)
{
	(void)sig;
	timed_out = 1;
	kill(child_pid, SIGKILL);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int by_name(const void *a, const void *b)
{
	const struct cr_shim_test *x = *(const struct cr_shim_test *const *)a;
	const struct cr_shim_test *y = *(const struct cr_shim_test *const *)b;
	int c = strcmp(x->suite, y->suite);

	return c ? c : strcmp(x->name, y->name);
}

enum verdict { PASS, FAIL, SKIP };
static const char *const verdict_name[] = { "PASS", "FAIL", "SKIP" };

/* Run one test in a child; why it failed or was skipped goes to why. */
static enum verdict run_test(const struct cr_shim_test *t, unsigned timeout, char *why,
			     size_t len)
{
	pid_t pid, runner = getpid();
	int status;

	memset(outcome, 0, sizeof(*outcome));
	fflush(NULL); /* or the child would print what is buffered again */
	pid = fork();
	if (pid < 0) {
		snprintf(why, len, "fork: %s", strerror(errno));
		return FAIL;
	}
	if (pid == 0)
		run_child(t, runner);

	child_pid = pid;
	timed_out = 0;
	alarm(timeout);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			snprintf(why, len, "waitpid: %s", strerror(errno));
			alarm(0);
			kill(pid, SIGKILL);
			return FAIL;
		}
	}
	alarm(0);

	if (timed_out) {
		snprintf(why, len, "timed out after %u s", timeout);
		return FAIL;
	}
	if (WIFSIGNALED(status)) {
		snprintf(why, len, "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
		return FAIL;
	}
	if (outcome->failed) {
		snprintf(why, len, "%d check%s failed", outcome->failed,
			 outcome->failed == 1 ? "" : "s");
		if (WEXITSTATUS(status) > 1)
			snprintf(why + strlen(why), len - strlen(why), ", exit status %d",
				 WEXITSTATUS(status));
		return FAIL;
	}
	if (WEXITSTATUS(status)) {
		snprintf(why, len, "exit status %d", WEXITSTATUS(status));
		return FAIL;
	}
	if (outcome->skipped) {
		snprintf(why, len, "%s", outcome->reason);
		return SKIP;
	}
	if (!outcome->finished) {
		snprintf(why, len, "exited during the test");
		return FAIL;
	}
	return PASS;
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f, "usage: %s [--filter SUBSTRING] [--timeout SECONDS] [--jobs N] [--verbose[=N]]\n"
		"Runs the tests whose suite::name contains SUBSTRING, each in its own process.\n"
		"--jobs and --verbose are accepted for Criterion's sake; tests always run one\n"
		"at a time, and every test's verdict (a skip with its reason) is printed.\n",
		prog);
}

int main(int argc, char **argv)
{
	const char *filter = NULL;
	unsigned timeout = DEFAULT_TIMEOUT;
	unsigned passed = 0, failed = 0, skipped = 0;
	struct cr_shim_test **tests, *t;
	struct sigaction sa;
	size_t i, n = 0;

	for (int a = 1; a < argc; a++) {
		const char *arg = argv[a], *val = NULL;

		if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
			usage(stdout, argv[0]);
			return 0;
		}
		if (!strcmp(arg, "--verbose") || !strncmp(arg, "--verbose=", 10))
			continue;
		if (!strcmp(arg, "--filter") || !strcmp(arg, "--timeout") ||
		    !strcmp(arg, "--jobs") || !strcmp(arg, "-j")) {
			if (a + 1 >= argc) {
				fprintf(stderr, "%s: %s needs a value\n", argv[0], arg);
				return 2;
			}
			val = argv[++a];
		} else if (!strncmp(arg, "--filter=", 9) || !strncmp(arg, "--timeout=", 10) ||
			   !strncmp(arg, "--jobs=", 7)) {
			val = strchr(arg, '=') + 1;
		} else {
			usage(stderr, argv[0]);
			return 2;
		}
		if (!strncmp(arg, "--filter", 8)) {
			filter = val;
		} else if (!strncmp(arg, "--timeout", 9)) {
			char *end;
			unsigned long v = strtoul(val, &end, 10);

			if (*end || !v || v > 86400) {
				fprintf(stderr, "%s: bad timeout '%s'\n", argv[0], val);
				return 2;
			}
			timeout = (unsigned)v;
		}
		/* --jobs: ignored */
	}

	outcome = mmap(NULL, sizeof(*outcome), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	tests = calloc(nregistered ? nregistered : 1, sizeof(*tests));
	if (outcome == MAP_FAILED || !tests) {
		perror("shim");
		return 2;
	}
	for (t = registry; t; t = t->next)
		tests[n++] = t;
	qsort(tests, n, sizeof(*tests), by_name);

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm; /* no SA_RESTART: waitpid returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);

	for (i = 0; i < n; i++) {
		char full[256], why[512] = "";
		enum verdict v;
		double t0;

		t = tests[i];
		snprintf(full, sizeof(full), "%s::%s", t->suite, t->name);
		if (filter && !strstr(full, filter))
			continue;
		t0 = now_s();
		v = run_test(t, timeout, why, sizeof(why));
		fprintf(stderr, "[%s] %s%s%s (%.2f s)\n", verdict_name[v], full, why[0] ? ": " : "",
			why, now_s() - t0);
		passed += v == PASS;
		failed += v == FAIL;
		skipped += v == SKIP;
	}
	fprintf(stderr, "%u passed, %u failed, %u skipped\n", passed, failed, skipped);
	free(tests);
	return failed ? 1 : 0;
}
