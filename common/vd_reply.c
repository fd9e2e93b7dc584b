/* vd_reply: classifying Redis error replies (see vd_reply.h).
 *
 * Redis puts a code word first ("OOM command not allowed ...", "-NOREPLICAS Not enough good
 * replicas to write."); a Function's own redis.call() errors keep that word ("-OOM ... script:
 * ..."). Plain "ERR" replies are told apart by their text. */
#include "vd_reply.h"

#include <string.h>

static const char *const code_names[VD_CODE__COUNT] = {
    "oom",     "misconf",     "readonly", "noreplicas", "loading",    "busy",
    "masterdown", "tryagain", "clusterdown", "ask",     "no_library", "other"};

/* Code words of server states that pass, in enum vd_reply_code order. */
static const char *const outage_words[] = {"OOM",        "MISCONF",  "READONLY",
                                           "NOREPLICAS", "LOADING",  "BUSY",
                                           "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                                           "ASK"};

/* Code words that mean the daemon cannot go on as configured. */
static const char *const fatal_words[] = {"NOPERM", "WRONGPASS", "NOAUTH", "MOVED", "CROSSSLOT"};

/* "ERR ..." texts, by what they start with or contain. */
struct text_rule {
    const char *text;
    int prefix; /* 1: the reply starts with text; 0: contains it */
    enum vd_reply_class cls;
    enum vd_reply_code code;
};

static const struct text_rule text_rules[] = {
    {"ERR Function not found", 1, VD_REPLY_NO_LIBRARY, VD_CODE_NO_LIBRARY},
    {"NOSCRIPT", 1, VD_REPLY_NO_LIBRARY, VD_CODE_NO_LIBRARY},
    /* An operator's FUNCTION KILL ended our call before it wrote anything. */
    {"ERR Script killed by user", 1, VD_REPLY_OUTAGE, VD_CODE_BUSY},
    /* A slot on its way to another node (keys of ours not all here yet). */
    {"Script attempted to access a non local key", 0, VD_REPLY_OUTAGE, VD_CODE_TRYAGAIN},
    /* ACLs that forbid keys a Function reaches; a prefix without a hash tag in a cluster. */
    {"can't access at least one of the keys", 0, VD_REPLY_FATAL, VD_CODE_OTHER},
    {"do not hash to the same slot", 0, VD_REPLY_FATAL, VD_CODE_OTHER},
    {"SELECT is not allowed in cluster mode", 1, VD_REPLY_FATAL, VD_CODE_OTHER},
};

/* 1 when err starts with word followed by a space or the end. */
static int starts_word(const char *err, size_t len, const char *word) {
    size_t n = strlen(word);
    return len >= n && memcmp(err, word, n) == 0 && (len == n || err[n] == ' ');
}

static int contains(const char *err, size_t len, const char *text) {
    size_t n = strlen(text);
    for (size_t i = 0; n <= len && i + n <= len; i++)
        if (memcmp(err + i, text, n) == 0) return 1;
    return 0;
}

enum vd_reply_class vd_reply_classify(const char *err, size_t len, enum vd_reply_code *code) {
    enum vd_reply_code dummy;
    if (!code) code = &dummy;
    *code = VD_CODE_OTHER;
    if (!err) return VD_REPLY_OTHER;
    if (len > 0 && err[0] == '-') {
        err++;
        len--;
    }
    for (size_t i = 0; i < sizeof outage_words / sizeof outage_words[0]; i++)
        if (starts_word(err, len, outage_words[i])) {
            *code = (enum vd_reply_code)i;
            return VD_REPLY_OUTAGE;
        }
    for (size_t i = 0; i < sizeof fatal_words / sizeof fatal_words[0]; i++)
        if (starts_word(err, len, fatal_words[i])) return VD_REPLY_FATAL;
    if (starts_word(err, len, "VDINPUT")) return VD_REPLY_INPUT;
    for (size_t i = 0; i < sizeof text_rules / sizeof text_rules[0]; i++) {
        const struct text_rule *t = &text_rules[i];
        if (t->prefix ? (len >= strlen(t->text) && memcmp(err, t->text, strlen(t->text)) == 0)
                      : contains(err, len, t->text)) {
            *code = t->code;
            return t->cls;
        }
    }
    return VD_REPLY_OTHER;
}

const char *vd_reply_code_name(enum vd_reply_code c) {
    return c >= 0 && c < VD_CODE__COUNT ? code_names[c] : "other";
}

const char *vd_reply_class_name(enum vd_reply_class c) {
    static const char *const names[VD_REPLY__COUNT] = {"outage", "no_library", "fatal", "input",
                                                       "other"};
    return c >= 0 && c < VD_REPLY__COUNT ? names[c] : "other";
}
