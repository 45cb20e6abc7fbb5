# The engine's threads stay out of the postmaster and of idle backends, and
# never receive PostgreSQL's signals.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('threads');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'peft'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION peft');

# Threads and blocked-signal mask of every thread of a process, from /proc.
sub thread_masks
{
	my ($pid) = @_;
	my %masks;
	opendir(my $dh, "/proc/$pid/task") or die "no /proc/$pid/task: $!";
	for my $tid (grep { /^\d+$/ } readdir($dh))
	{
		my $status = slurp_file("/proc/$pid/task/$tid/status");
		my ($blk) = $status =~ /^SigBlk:\s*([0-9a-f]+)/m;
		# Only signals 1..32 matter here; keep the low 32 bits (portable hex).
		$masks{$tid} = hex(substr($blk, -8));
	}
	closedir($dh);
	return \%masks;
}

# Bits of the signals PostgreSQL handles: HUP INT QUIT USR1 USR2 TERM ALRM CHLD.
my $pg_signals = 0;
$pg_signals |= 1 << ($_ - 1) for (1, 2, 3, 10, 12, 14, 15, 17);

# The postmaster loaded peft.so (preloaded) and runs no extra thread.
my $pm_pid = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
is(scalar(keys %{ thread_masks($pm_pid) }), 1, 'postmaster with peft preloaded has one thread');

# A backend that called into peft.so but computed nothing has one thread.
my $out = $node->safe_psql('postgres', q{
	SELECT peft_version();
	SELECT pg_backend_pid();
	SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'Threads:\s*(\d+)'))[1];
});
my (undef, undef, $threads) = split /\n/, $out;
is($threads, '1', 'backend that loaded peft.so but computed nothing has one thread');

# Loading the engine starts threads; all of them block PostgreSQL's signals
# and the main thread still receives them.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('SET peft.threads = 2');
$bg->query_safe('SELECT peft_engine_info()');
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
chomp $pid;
my $masks = thread_masks($pid);
cmp_ok(scalar(keys %$masks), '>', 1, 'engine started worker threads in the backend that computes');
my @open = grep { $_ != $pid && ($masks->{$_} & $pg_signals) != $pg_signals } keys %$masks;
is(scalar(@open), 0, 'every engine thread blocks PostgreSQL signals');
is($masks->{$pid} & (1 << 1), 0, 'the main thread still receives SIGINT');

# Cancel still works in a backend whose engine is loaded.
$bg->query("SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(30)");
like($bg->{stderr}, qr/canceling statement due to user request/, 'query cancel reaches a backend running the engine');
$bg->quit;

# peft.so links neither BLAS nor CUDA; the engine links OpenBLAS.
my $libdir = $node->config_data('--pkglibdir');
my $ldd_peft = `ldd $libdir/peft.so`;
unlike($ldd_peft, qr/openblas|cublas|cudart/, 'peft.so links neither OpenBLAS nor CUDA');
my $ldd_engine = `ldd $libdir/peft_engine.so`;
like($ldd_engine, qr/openblas/, 'peft_engine.so links OpenBLAS');

$node->stop;
done_testing();
