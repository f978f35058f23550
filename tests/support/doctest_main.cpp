#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

// ctest runs one test case per process, selected by its name (doctest_discover_tests). A name
// that CMake splits (a ';' in it is a list separator) or that no longer matches selects nothing,
// and doctest calls a run of nothing a pass: so count the test cases that ran. A test case that
// asserted nothing (it returned early, say, because a tool was missing) cannot have failed either:
// it fails the run too.
int cases_run = 0;
std::vector<std::string> asserted_nothing;

struct CountingListener final : doctest::IReporter {
    explicit CountingListener(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats&) override {}
    void test_case_start(const doctest::TestCaseData& tc) override
    {
        ++cases_run;
        current_ = tc.m_name;
    }
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats& stats) override
    {
        if (stats.numAssertsCurrentTest == 0 && stats.failure_flags == 0) {
            asserted_nothing.emplace_back(current_);
        }
    }
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}

private:
    std::string current_;
};

REGISTER_LISTENER("count_test_cases", 1, CountingListener);

}  // namespace

int main(int argc, char** argv)
{
    doctest::Context context(argc, argv);
    const int rc = context.run();
    if (context.shouldExit()) {  // --list-test-cases, --help, ...
        return rc;
    }
    if (rc == 0 && cases_run == 0) {
        std::fputs("no test case ran: the name filter matches none (a ';' in a TEST_CASE name splits it "
                   "into several ctest names)\n",
                   stderr);
        return 1;
    }
    for (const std::string& name : asserted_nothing) {
        std::fprintf(stderr, "test case \"%s\" checked nothing: it cannot fail as written\n", name.c_str());
    }
    if (rc == 0 && !asserted_nothing.empty()) {
        return 1;
    }
    return rc;
}
