/* Unit tests of the Redis error reply classes (common/vd_reply.c), with the texts Redis 7
 * sends in each state (seen on the real server: see tests/integration/test_failsafe.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "vd_reply.h"

struct reply_case {
    const char *text;
    enum vd_reply_class cls;
    enum vd_reply_code code;
};

static const struct reply_case cases[] = {
    {"OOM command not allowed when used memory > 'maxmemory'.", VD_REPLY_OUTAGE, VD_CODE_OOM},
    {"MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist "
     "to disk.", VD_REPLY_OUTAGE, VD_CODE_MISCONF},
    {"READONLY You can't write against a read only replica.", VD_REPLY_OUTAGE, VD_CODE_READONLY},
    {"NOREPLICAS Not enough good replicas to write.", VD_REPLY_OUTAGE, VD_CODE_NOREPLICAS},
    {"LOADING Redis is loading the dataset in memory", VD_REPLY_OUTAGE, VD_CODE_LOADING},
    {"BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.",
     VD_REPLY_OUTAGE, VD_CODE_BUSY},
    {"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
     VD_REPLY_OUTAGE, VD_CODE_MASTERDOWN},
    {"TRYAGAIN Multiple keys request during rehashing of slot", VD_REPLY_OUTAGE, VD_CODE_TRYAGAIN},
    {"CLUSTERDOWN Hash slot not served", VD_REPLY_OUTAGE, VD_CODE_CLUSTERDOWN},
    {"CLUSTERDOWN The cluster is down", VD_REPLY_OUTAGE, VD_CODE_CLUSTERDOWN},
    {"ASK 11694 127.0.0.1:17012", VD_REPLY_OUTAGE, VD_CODE_ASK},
    /* A redis.call() inside a Function keeps the code word first. */
    {"OOM command not allowed when used memory > 'maxmemory'. script: vd7_claim, on "
     "@user_function:12.", VD_REPLY_OUTAGE, VD_CODE_OOM},
    {"ERR Script killed by user with SCRIPT KILL... script: x, on @user_function:10.",
     VD_REPLY_OUTAGE, VD_CODE_BUSY},
    {"ERR Script attempted to access a non local key in a cluster node script: x, on "
     "@user_function:26.", VD_REPLY_OUTAGE, VD_CODE_TRYAGAIN},
    {"ERR Function not found", VD_REPLY_NO_LIBRARY, VD_CODE_NO_LIBRARY},
    {"-ERR Function not found", VD_REPLY_NO_LIBRARY, VD_CODE_NO_LIBRARY},
    {"NOPERM this user has no permissions to run the 'fcall' command", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"NOPERM this user has no permissions to access one of the keys used as arguments",
     VD_REPLY_FATAL, VD_CODE_OTHER},
    {"ERR The user executing the script can't access at least one of the keys mentioned in the "
     "command arguments script: multi", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"WRONGPASS invalid username-password pair or user is disabled.", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"NOAUTH Authentication required.", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"MOVED 11694 127.0.0.1:7001", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"CROSSSLOT Keys in request don't hash to the same slot", VD_REPLY_FATAL, VD_CODE_OTHER},
    {"ERR Script attempted to access keys that do not hash to the same slot script: x",
     VD_REPLY_FATAL, VD_CODE_OTHER},
    {"VDINPUT location.lat", VD_REPLY_INPUT, VD_CODE_OTHER},
    {"VDINPUT", VD_REPLY_INPUT, VD_CODE_OTHER},
    {"ERR user_function:12: attempt to compare nil with number", VD_REPLY_OTHER, VD_CODE_OTHER},
    {"WRONGTYPE Operation against a key holding the wrong kind of value", VD_REPLY_OTHER,
     VD_CODE_OTHER},
    /* A code word must be a whole word. */
    {"OOMPH something", VD_REPLY_OTHER, VD_CODE_OTHER},
    {"BUSYGROUP Consumer Group name already exists", VD_REPLY_OTHER, VD_CODE_OTHER},
    {"VDINPUTX", VD_REPLY_OTHER, VD_CODE_OTHER},
    {"", VD_REPLY_OTHER, VD_CODE_OTHER},
};

static void test_classes(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum vd_reply_code code = VD_CODE__COUNT;
        enum vd_reply_class cls = vd_reply_classify(cases[i].text, strlen(cases[i].text), &code);
        if (cls != cases[i].cls || code != cases[i].code)
            print_error("%s: class %s code %s, expected %s %s\n", cases[i].text,
                        vd_reply_class_name(cls), vd_reply_code_name(code),
                        vd_reply_class_name(cases[i].cls), vd_reply_code_name(cases[i].code));
        assert_int_equal(cls, cases[i].cls);
        assert_int_equal(code, cases[i].code);
    }
}

/* The length is respected: a reply is not NUL-terminated where the caller says it ends. */
static void test_length(void **state) {
    (void)state;
    assert_int_equal(vd_reply_classify("OOM", 2, NULL), VD_REPLY_OTHER);
    assert_int_equal(vd_reply_classify("OOM x", 3, NULL), VD_REPLY_OUTAGE);
    assert_int_equal(vd_reply_classify(NULL, 0, NULL), VD_REPLY_OTHER);
    assert_int_equal(vd_reply_classify("ERR Function not foundXYZ", 22, NULL), VD_REPLY_NO_LIBRARY);
}

static void test_names(void **state) {
    (void)state;
    assert_string_equal(vd_reply_code_name(VD_CODE_NOREPLICAS), "noreplicas");
    assert_string_equal(vd_reply_code_name(VD_CODE_NO_LIBRARY), "no_library");
    assert_string_equal(vd_reply_code_name(VD_CODE__COUNT), "other");
    assert_string_equal(vd_reply_class_name(VD_REPLY_FATAL), "fatal");
    assert_string_equal(vd_reply_class_name(VD_REPLY__COUNT), "other");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
