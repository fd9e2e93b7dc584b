/* Unit tests of the matching core (common/vd_match.c): filters, score, ranking, counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "vd_match.h"

static struct vd_candidate cand(const char *id, double dist, const char *skills,
                                const char *langs, int max_tasks, int tasks) {
    struct vd_candidate c;
    memset(&c, 0, sizeof c);
    snprintf(c.id, sizeof c.id, "%s", id);
    c.distance_m = dist;
    snprintf(c.skills, sizeof c.skills, "%s", skills);
    snprintf(c.languages, sizeof c.languages, "%s", langs);
    c.max_tasks = max_tasks;
    c.tasks_24h = tasks;
    return c;
}

static void add_tag(struct vd_tags *t, const char *s) { snprintf(t->v[t->n++], VD_ID_MAX + 1, "%s", s); }

static void test_list_has(void **state) {
    assert_true(vd_match_list_has("first_aid,driver", "driver"));
    assert_true(vd_match_list_has("first_aid,driver", "first_aid"));
    assert_false(vd_match_list_has("first_aid,driver", "first"));
    assert_false(vd_match_list_has("first_aid,driver", "aid"));
    assert_false(vd_match_list_has("", "zh"));
    assert_false(vd_match_list_has("zh", ""));
}

static void test_skills_all_required(void **state) {
    struct vd_event req = {0};
    add_tag(&req.skills, "first_aid");
    add_tag(&req.skills, "driver");
    struct vd_candidate a = cand("a", 10, "first_aid", "zh", 0, 0);
    struct vd_candidate b = cand("b", 10, "driver,first_aid,legal", "zh", 0, 0);
    assert_int_equal(vd_match_filter(&req, &a, 4), VD_FILTER_SKILLS);
    assert_int_equal(vd_match_filter(&req, &b, 4), VD_FILTER_OK);
}

static void test_languages_any(void **state) {
    struct vd_event req = {0};
    add_tag(&req.languages, "mn");
    add_tag(&req.languages, "en");
    struct vd_candidate a = cand("a", 10, "", "zh", 0, 0);
    struct vd_candidate b = cand("b", 10, "", "zh,mn", 0, 0);
    assert_int_equal(vd_match_filter(&req, &a, 4), VD_FILTER_LANGUAGES);
    assert_int_equal(vd_match_filter(&req, &b, 4), VD_FILTER_OK);
    struct vd_event none = {0};
    assert_int_equal(vd_match_filter(&none, &a, 4), VD_FILTER_OK); /* no language asked */
}

static void test_fatigue_own_cap_wins(void **state) {
    struct vd_event req = {0};
    struct vd_candidate a = cand("a", 10, "", "", 0, 4);  /* default cap 4: reached */
    struct vd_candidate b = cand("b", 10, "", "", 6, 4);  /* own cap 6 */
    struct vd_candidate c = cand("c", 10, "", "", 2, 2);  /* own cap 2: reached */
    assert_int_equal(vd_match_filter(&req, &a, 4), VD_FILTER_FATIGUE);
    assert_int_equal(vd_match_filter(&req, &b, 4), VD_FILTER_OK);
    assert_int_equal(vd_match_filter(&req, &c, 4), VD_FILTER_FATIGUE);
}

static void test_max_distance(void **state) {
    struct vd_event req = {0};
    req.max_distance_m = 300;
    struct vd_candidate a = cand("a", 301, "", "", 0, 0);
    struct vd_candidate b = cand("b", 300, "", "", 0, 0);
    assert_int_equal(vd_match_filter(&req, &a, 4), VD_FILTER_DISTANCE);
    assert_int_equal(vd_match_filter(&req, &b, 4), VD_FILTER_OK);
}

static void test_score_shading(void **state) {
    struct vd_event req = {0};
    struct vd_candidate near_busy = cand("a", 100, "", "", 0, 2);
    struct vd_candidate far_fresh = cand("b", 300, "", "", 0, 0);
    /* Two tasks today cost 2 * 150 m: 400 > 300. */
    assert_true(vd_match_score(&req, &near_busy) > vd_match_score(&req, &far_fresh));
    snprintf(req.preferred_volunteer_id, sizeof req.preferred_volunteer_id, "b");
    assert_true(vd_match_score(&req, &far_fresh) < vd_match_score(&req, &near_busy));
    /* Distance stays first: the preferred volunteer 2 km away loses to one 100 m away. */
    struct vd_candidate pref_far = cand("b", 2000, "", "", 0, 0);
    struct vd_candidate close = cand("c", 100, "", "", 0, 0);
    assert_true(vd_match_score(&req, &close) < vd_match_score(&req, &pref_far));
}

static void test_rank_filters_counts_order(void **state) {
    struct vd_event req = {0};
    add_tag(&req.skills, "first_aid");
    add_tag(&req.languages, "mn");
    struct vd_candidate c[6] = {
        cand("v1", 50, "first_aid", "zh", 0, 0),      /* language */
        cand("v2", 80, "", "mn", 0, 0),               /* skills */
        cand("v3", 120, "first_aid", "mn", 0, 4),     /* fatigue */
        cand("v4", 400, "first_aid", "zh,mn", 0, 0),  /* ok */
        cand("v5", 200, "first_aid,driver", "mn", 0, 1), /* ok: 200 + 150 = 350 */
        cand("v6", 400, "first_aid", "mn", 0, 0),     /* ok, ties v4: stays after it */
    };
    struct vd_match_stats st = {0};
    size_t kept = vd_match_rank(&req, c, 6, 4, &st);
    assert_int_equal(kept, 3);
    assert_string_equal(c[0].id, "v5");
    assert_string_equal(c[1].id, "v4");
    assert_string_equal(c[2].id, "v6");
    assert_int_equal(st.considered, 6);
    assert_int_equal(st.filtered[VD_FILTER_LANGUAGES], 1);
    assert_int_equal(st.filtered[VD_FILTER_SKILLS], 1);
    assert_int_equal(st.filtered[VD_FILTER_FATIGUE], 1);
    assert_string_equal(vd_filter_name(VD_FILTER_FATIGUE), "fatigue");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_skills_all_required),
        cmocka_unit_test(test_languages_any),
        cmocka_unit_test(test_fatigue_own_cap_wins),
        cmocka_unit_test(test_max_distance),
        cmocka_unit_test(test_score_shading),
        cmocka_unit_test(test_rank_filters_counts_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
