/* SPDX-License-Identifier: MIT */
/*
 * A Criterion stand-in for ThreadSanitizer builds (Criterion cannot start under
 * TSan: Snaipe/Criterion #274): the part of its API the tests use; see shim_main.c.
 */
#ifndef LAZYMAP_CRITERION_SHIM_H
#define LAZYMAP_CRITERION_SHIM_H

/* What Criterion's own header brings in, so that tests lean on nothing more. */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/*
 * One test. Test() fills in the first fields; its optional designated
 * initialisers set the rest. .timeout and .description are accepted and
 * ignored (the runner has one timeout for all); Criterion's other fields
 * (.signal, .exit_code, .disabled) are not there, so that a test relying on
 * them fails to build rather than being judged wrongly.
 */
struct cr_shim_test {
	const char *suite, *name, *file;
	int line;
	void (*fn)(void);
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	const char *description;
	struct cr_shim_test *next;
};

void cr_shim_register_(struct cr_shim_test *t);

/*
 * A failed check: cr_shim_abort_() ends the test, cr_shim_continue_() only
 * records the failure. left/right: the strings compared, or NULL. fmt starts
 * with a dummy "x" (as in Criterion), so that the message may be left out.
 */
__attribute__((noreturn, format(printf, 6, 7)))
void cr_shim_abort_(const char *file, int line, const char *expr, const char *left,
		    const char *right, const char *fmt, ...);
__attribute__((format(printf, 6, 7)))
void cr_shim_continue_(const char *file, int line, const char *expr, const char *left,
		       const char *right, const char *fmt, ...);
__attribute__((noreturn, format(printf, 3, 4)))
void cr_shim_skip_(const char *file, int line, const char *fmt, ...);
__attribute__((format(printf, 2, 3)))
void cr_shim_log_(const char *level, const char *fmt, ...);

#define Test(Suite, Name, ...)                                                  \
	static void cr_shim_fn_##Suite##_##Name(void);                          \
	static struct cr_shim_test cr_shim_test_##Suite##_##Name = {            \
		.suite = #Suite, .name = #Name, .file = __FILE__,               \
		.line = __LINE__, .fn = cr_shim_fn_##Suite##_##Name,            \
		__VA_ARGS__                                                     \
	};                                                                      \
	__attribute__((constructor)) static void cr_shim_reg_##Suite##_##Name(void) \
	{                                                                       \
		cr_shim_register_(&cr_shim_test_##Suite##_##Name);              \
	}                                                                       \
	static void cr_shim_fn_##Suite##_##Name(void)

/*
 * ---- checks. Every operand is evaluated once; the expression is shown as
 * written (stringified here, before its macros are expanded).
 */
#define CR_SHIM_CHECK_(fail, cond, expr, ...)                                   \
	do {                                                                    \
		if (!(cond))                                                    \
			fail(__FILE__, __LINE__, expr, NULL, NULL,              \
			     "x" __VA_ARGS__);                                  \
	} while (0)

#define CR_SHIM_OP_(fail, op, a, b, sa, sb, ...)                                \
	CR_SHIM_CHECK_(fail, (a) op (b), "(" sa ") " #op " (" sb ")", __VA_ARGS__)

#define CR_SHIM_STR_(fail, op, a, b, sa, sb, ...)                               \
	do {                                                                    \
		const char *cr_shim_l_ = (a), *cr_shim_r_ = (b);                \
		if (!(strcmp(cr_shim_l_, cr_shim_r_) op 0))                     \
			fail(__FILE__, __LINE__, "(" sa ") " #op " (" sb ")",    \
			     cr_shim_l_, cr_shim_r_, "x" __VA_ARGS__);          \
	} while (0)

#define CR_SHIM_MEM_(fail, a, b, size, sa, sb, ssize, ...)                      \
	CR_SHIM_CHECK_(fail, !memcmp((a), (b), (size)),                         \
		       "memcmp(" sa ", " sb ", " ssize ") == 0", __VA_ARGS__)

#define CR_SHIM_NULL_(fail, op, p, sp, ...)                                     \
	CR_SHIM_OP_(fail, op, p, NULL, sp, "NULL", __VA_ARGS__)

#define CR_SHIM_NOT_(fail, cond, scond, ...)                                    \
	CR_SHIM_CHECK_(fail, !(cond), "!(" scond ")", __VA_ARGS__)

#define cr_assert(cond, ...)        CR_SHIM_CHECK_(cr_shim_abort_, cond, #cond, __VA_ARGS__)
#define cr_expect(cond, ...)        CR_SHIM_CHECK_(cr_shim_continue_, cond, #cond, __VA_ARGS__)
#define cr_assert_not(cond, ...)    CR_SHIM_NOT_(cr_shim_abort_, cond, #cond, __VA_ARGS__)
#define cr_expect_not(cond, ...)    CR_SHIM_NOT_(cr_shim_continue_, cond, #cond, __VA_ARGS__)

#define cr_assert_eq(a, b, ...)     CR_SHIM_OP_(cr_shim_abort_, ==, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)     CR_SHIM_OP_(cr_shim_continue_, ==, a, b, #a, #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)    CR_SHIM_OP_(cr_shim_abort_, !=, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...)    CR_SHIM_OP_(cr_shim_continue_, !=, a, b, #a, #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)     CR_SHIM_OP_(cr_shim_abort_, <, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)     CR_SHIM_OP_(cr_shim_continue_, <, a, b, #a, #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)    CR_SHIM_OP_(cr_shim_abort_, <=, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...)    CR_SHIM_OP_(cr_shim_continue_, <=, a, b, #a, #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)     CR_SHIM_OP_(cr_shim_abort_, >, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)     CR_SHIM_OP_(cr_shim_continue_, >, a, b, #a, #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)    CR_SHIM_OP_(cr_shim_abort_, >=, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...)    CR_SHIM_OP_(cr_shim_continue_, >=, a, b, #a, #b, __VA_ARGS__)

#define cr_assert_null(p, ...)      CR_SHIM_NULL_(cr_shim_abort_, ==, p, #p, __VA_ARGS__)
#define cr_expect_null(p, ...)      CR_SHIM_NULL_(cr_shim_continue_, ==, p, #p, __VA_ARGS__)
#define cr_assert_not_null(p, ...)  CR_SHIM_NULL_(cr_shim_abort_, !=, p, #p, __VA_ARGS__)
#define cr_expect_not_null(p, ...)  CR_SHIM_NULL_(cr_shim_continue_, !=, p, #p, __VA_ARGS__)

#define cr_assert_str_eq(a, b, ...) CR_SHIM_STR_(cr_shim_abort_, ==, a, b, #a, #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) CR_SHIM_STR_(cr_shim_continue_, ==, a, b, #a, #b, __VA_ARGS__)

#define cr_assert_arr_eq(a, b, size, ...)                                       \
	CR_SHIM_MEM_(cr_shim_abort_, a, b, size, #a, #b, #size, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, size, ...)                                       \
	CR_SHIM_MEM_(cr_shim_continue_, a, b, size, #a, #b, #size, __VA_ARGS__)

/* Ends the test as skipped; the message is optional, as in Criterion. */
#define cr_skip_test(...)           cr_shim_skip_(__FILE__, __LINE__, "x" __VA_ARGS__)

#define cr_log_info(...)            cr_shim_log_("info", __VA_ARGS__)
#define cr_log_warn(...)            cr_shim_log_("warn", __VA_ARGS__)
#define cr_log_error(...)           cr_shim_log_("error", __VA_ARGS__)

#endif
