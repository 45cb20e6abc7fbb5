# The serving worker decodes and embeds for every connection
# (peft.serve = on): peft_generate's prompts join one continuously batched
# stream, peft_embed's rows are batched like peft_predict's.
#
#  1. embeddings through the worker equal serve = off's (all three forms)
#  2. generations through the worker equal serve = off's, greedy and
#     sampled, mixed adapters (LoRA, (IA)^3, prompt and prefix tuning, the
#     base) in one call, and the one-adapter forms
#  3. many connections at once: each gets serve = off's completion
#  4. continuous batching: a short generation started while a long one
#     decodes comes back before the long one ends
#  5. cancel and statement_timeout of a decoding call: its prompt leaves
#     the stream, the worker serves on
#  6. errors come back with their errcodes: a bad option, an adapter over
#     an encoder, an adapter the role cannot see (nothing queued)
#  7. a connection that generates or embeds maps no engine, BLAS or weights
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use PeftTest;

# serve = on and off compute the same network; embeddings differ only by the batch's float sums
use constant EMBED_TOLERANCE => 1e-5;

my $decoder = $ENV{PEFT_DECODER_GGUF};
# the decoder is fetched by ./test/run (scripts/fetch_model --decoder): its absence is a failure
ok(defined $decoder && -f $decoder, 'the decoder model file is present (PEFT_DECODER_GGUF)')
  or BAIL_OUT('PEFT_DECODER_GGUF is not set or missing');

my $node = peft_node('serve_gen', conf => "shared_preload_libraries = 'peft'\n");

sub su
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}


my $MAPS = maps_sql();

# ---- 1. embeddings -----------------------------------------------------------------
su(reviews_sql('reviews', 120));
train_and_wait($node, 'e1', 'reviews');
train_and_wait($node, 'e2', 'reviews', method => 'ia3');
my @texts = ('the movie was good', 'terrible food today', 'river', 'we went to the city');
my $arr = "ARRAY['" . join("','", @texts) . "']";

# The largest difference between two lists of "ord|{x,y,...}" lines (9e9 when they do not pair up).
sub max_diff
{
	my ($a, $b) = @_;
	my @a = split /\n/, $a;
	my @b = split /\n/, $b;
	return 9e9 unless @a == @b && @a > 0;
	my $worst = 0;
	for my $i (0 .. $#a)
	{
		my ($ka, $va) = split /\|/, $a[$i];
		my ($kb, $vb) = split /\|/, $b[$i];
		return 9e9 unless $ka eq $kb && defined $va && defined $vb;
		my @x = split /,/, ($va =~ s/[{}]//gr);
		my @y = split /,/, ($vb =~ s/[{}]//gr);
		return 9e9 unless @x == @y && @x > 0;
		for my $j (0 .. $#x)
		{
			my $d = abs($x[$j] - $y[$j]);
			return 9e9 if $d != $d || $x[$j] =~ /nan|inf/i;
			$worst = $d if $d > $worst;
		}
	}
	return $worst;
}

my %embed_sql = (
	single => "SELECT 1, peft_embed('tiny', '$texts[0]', 'e1')",
	array => "SELECT ord, embedding FROM peft_embed('tiny', $arr || NULL::text, 'e2') ORDER BY ord",
	mixed => "SELECT ord, embedding FROM peft_embed('tiny', $arr, ARRAY['e1', NULL, 'e2', 'e1']) ORDER BY ord");
for my $form (sort keys %embed_sql)
{
	my $off = su($embed_sql{$form});
	my $on = su("SET peft.serve = on; $embed_sql{$form}");
	my $d = max_diff($off =~ s/\|$/|{0}/mgr, $on =~ s/\|$/|{0}/mgr);
	ok($d <= EMBED_TOLERANCE, "embed ($form): serve = on equals serve = off within EMBED_TOLERANCE (max diff $d)");
}
is(su("SET peft.serve = on; SELECT count(*) FILTER (WHERE embedding IS NULL) FROM peft_embed('tiny', ARRAY[NULL, 'x'], ARRAY['e1', 'e1'])"),
	'1', 'embed: a NULL input gives a NULL embedding through the worker');
my $embed_worker = serving_pids($node);
like($embed_worker, qr/^\d+$/, 'embed: one serving worker for the encoder');
is(su("SET peft.serve = on; SELECT count(*) FROM peft_embed('tiny', ARRAY['a', 'b']); $MAPS"), "2\n0",
	'maps: a connection that embeds with serve = on maps no engine, BLAS or weights');

# ---- the decoder and its adapters ----------------------------------------------------
su("SELECT name FROM peft_register_model('smol', '$decoder')");
su(q{CREATE TABLE pairs (id int, prompt text, completion text);
     INSERT INTO pairs
     SELECT i, format('Mix the words %s and %s into one line.', a, b), format('%s-%s', a, b)
     FROM (SELECT i, (ARRAY['red','blue','green','yellow','black','white','purple','orange'])[1 + (i * 7) % 8] AS a,
                  (ARRAY['red','blue','green','yellow','black','white','purple','orange'])[1 + (i * 3 + i / 8) % 8] AS b
           FROM generate_series(1, 32) i) s});
for my $m (qw(lora ia3 prompt prefix))
{
	my $extra = $m eq 'prompt' || $m eq 'prefix' ? ', "num_virtual_tokens": 4' : '';
	su("SELECT peft_train('g_$m', 'smol', 'SELECT prompt, completion FROM pairs', input => 'prompt', "
		  . "label => 'completion', task => 'generation', method => '$m', "
		  . "options => '{\"max_steps\": 3, \"batch_size\": 4, \"learning_rate\": 2e-3, \"eval_generate\": false$extra}', "
		  . "wait => true)");
}
is(su("SELECT count(*) FROM peft.adapters WHERE name LIKE 'g\\_%' AND active"), '4', 'four decoder adapters trained');

# ---- 2. generations equal serve = off's --------------------------------------------------
my @prompts = ('Mix the words red and blue into one line.', 'What is the capital of France?',
	'Mix the words pink and gray into one line.', 'Name a colour.', 'Say hello.', 'Mix the words black and white into one line.');
my $parr = "ARRAY['" . join("','", @prompts) . "']";
my $aarr = "ARRAY['g_lora', NULL, 'g_ia3', 'g_prompt', 'g_lora', 'g_prefix']";
my %gen_sql = (
	'mixed greedy' => "SELECT ord, adapter, completion, tokens, finish_reason FROM peft_generate('smol', $parr, $aarr, "
	  . "'{\"max_new_tokens\": 16}') ORDER BY ord",
	'mixed sampled' => "SELECT ord, adapter, completion, tokens, finish_reason FROM peft_generate('smol', $parr, $aarr, "
	  . "'{\"max_new_tokens\": 16, \"temperature\": 0.9, \"top_p\": 0.9, \"seed\": 42}') ORDER BY ord",
	'array' => "SELECT ord, completion, tokens, finish_reason FROM peft_generate('smol', $parr || NULL::text, 'g_lora', "
	  . "'{\"max_new_tokens\": 12, \"temperature\": 0.7, \"seed\": 3}') ORDER BY ord",
	'single' => "SELECT peft_generate(NULL, 'Mix the words red and green into one line.', 'g_prompt', '{\"max_new_tokens\": 10}')",
	'stop' => "SELECT peft_generate('smol', 'Count from 1 to 20.', NULL, '{\"max_new_tokens\": 40, \"stop\": \"5\"}')");
my %want;
for my $form (sort keys %gen_sql)
{
	$want{$form} = su($gen_sql{$form});
	is(su("SET peft.serve = on; $gen_sql{$form}"), $want{$form}, "generate ($form): serve = on gives serve = off's rows");
}
my $gen_worker = (grep { $_ ne $embed_worker } split /,/, serving_pids($node))[0] // '';
like($gen_worker, qr/^\d+$/, 'generate: a serving worker of its own for the decoder');

# ---- 3. many connections at once ---------------------------------------------------------
my @adapters = ('g_lora', 'g_ia3', 'g_prompt', 'g_prefix', undef);
my %single;
sub single_sql
{
	my ($a, $p) = @_;
	return "SELECT peft_generate('smol', '$p', " . (defined $a ? "'$a'" : 'NULL') . ", '{\"max_new_tokens\": 12}')";
}
my $SESSIONS = 6;
my $CALLS = 3;
my (@harness, @outs, @errs, @expect);
for my $s (1 .. $SESSIONS)
{
	my $sql = "SET peft.serve = on;\n";
	my @e;
	for my $c (1 .. $CALLS)
	{
		my $a = $adapters[ ($s + $c * 2) % @adapters ];
		my $p = $prompts[ ($s * 5 + $c) % @prompts ];
		my $key = ($a // 'base') . "|$p";
		$single{$key} //= su(single_sql($a, $p));
		push @e, $single{$key};
		$sql .= single_sql($a, $p) . ";\n";
	}
	push @expect, \@e;
	my ($o, $e) = ('', '');
	push @outs, \$o;
	push @errs, \$e;
	push @harness, IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$sql, '>', \$o, '2>', \$e);
}
$_->finish for @harness;
my ($errors, $wrong) = (0, 0);
for my $i (0 .. $#outs)
{
	$errors++ if ${ $errs[$i] } ne '';
	$wrong++ unless ${ $outs[$i] } eq join("\n", @{ $expect[$i] }) . "\n";
}
is($errors, 0, 'concurrent: no session had an error') or diag(join "\n", map { $$_ } @errs);
is($wrong, 0, 'concurrent: every completion equals the one serve = off gives alone');
is(join(',', sort split /,/, serving_pids($node)), join(',', sort($embed_worker, $gen_worker)),
	'concurrent: the same decoder worker served every session');

# ---- 4. continuous batching ---------------------------------------------------------------
# A long generation (300 new tokens: a raw prompt counting on, which the model
# continues) is decoding; a short one started after it must come back while the
# long one is still running.
my $long = $node->background_psql('postgres', on_error_stop => 0);
$long->query_safe('SET peft.serve = on');
$long->query_until(qr/started/, "\\echo started\nSELECT length(peft_generate('smol', "
	  . "'long one: 1, 2, 3, 4, 5, 6, 7,', NULL, '{\"max_new_tokens\": 300, \"chat\": false}'));\n");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Extension' AND query LIKE '%long one%'"),
	'continuous: the long generation waits for the worker');
sleep 1;
is(su("SET peft.serve = on; SELECT peft_generate('smol', 'Say hello.', NULL, '{\"max_new_tokens\": 4}') IS NOT NULL"), 't',
	'continuous: a short generation started meanwhile is answered');
is(su("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%long one%' AND state = 'active' AND pid <> pg_backend_pid()"),
	'1', 'continuous: while the long one is still decoding (it joined, it did not wait)');

# ---- 5. cancel and statement_timeout -------------------------------------------------------
my $log = -s $node->logfile;
su("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%long one%' AND pid <> pg_backend_pid()");
$long->query('SELECT 1');
like($long->{stderr}, qr/canceling statement due to user request/, 'cancel: the decoding call is canceled');
$long->{stderr} = '';
$long->query("SET statement_timeout = '500ms'; SELECT peft_generate('smol', 'timeout one: 1, 2, 3, 4, 5, 6, 7,', "
	  . "NULL, '{\"max_new_tokens\": 300, \"chat\": false}')");
like($long->{stderr}, qr/canceling statement due to statement timeout/, 'statement_timeout: the decoding call ends');
$long->quit;
is(su("SET peft.serve = on; " . single_sql('g_lora', $prompts[0])), su(single_sql('g_lora', $prompts[0])),
	'cancel: the next call is answered as serve = off answers it');
like(serving_pids($node), qr/\b$gen_worker\b/, 'cancel: by the same worker');
ok(!$node->log_contains(qr/peft serving worker.*failed|serving.*(ERROR|FATAL)/, $log), 'cancel: the worker logged no error');

# ---- 6. errors ------------------------------------------------------------------------------
my ($rc, $out, $err);
for my $case (
	[ "SELECT peft_generate('smol', 'x', NULL, '{\"temperature\": -1}')", qr/ERROR:  22023: peft_generate option "temperature" must be/, 'a bad option' ],
	[ "SELECT peft_generate(NULL, 'x', 'e1')", qr/ERROR:  22023: adapter "e1" is over an encoder/, 'an adapter over an encoder' ],
	[ "SELECT * FROM peft_generate('smol', ARRAY['x'], ARRAY['e1'])", qr/ERROR:  22023: adapter "e1" was trained over model "tiny", not "smol"/, 'an adapter over another model' ],
	[ "SELECT peft_generate('smol', 'x', NULL, '{\"chat\": 1}')", qr/ERROR:  22023: peft_generate option "chat" must be true or false/, 'a wrong option type' ])
{
	my ($sql, $re, $what) = @$case;
	my ($rc_off, $out_off, $err_off) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSET peft.serve = on;\n$sql");
	like($err, $re, "errors: $what is the caller's ERROR through the worker");
	is(($err =~ /ERROR:  (\w+: [^\n]*)/)[0], ($err_off =~ /ERROR:  (\w+: [^\n]*)/)[0], "errors: $what reads as with serve = off");
}
su("CREATE ROLE carol LOGIN; ALTER ROLE carol SET peft.serve = on");
my $before = serving_pids($node);
($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT * FROM peft_generate('smol', ARRAY['x'], ARRAY['g_lora'])",
	extra_params => [ '-U', 'carol' ]);
like($err, qr/ERROR:  42704: adapter "g_lora" does not exist or has no active version/,
	'errors: an adapter the role cannot see is an ERROR naming it, decided in the caller');
is(serving_pids($node), $before, 'errors: nothing was queued for it (no new worker)');

# ---- 7. no engine in a generating connection ------------------------------------------------
is(su("SET peft.serve = on; SELECT count(*) FROM peft_generate('smol', ARRAY['Say hi.'], ARRAY['g_ia3'], '{\"max_new_tokens\": 2}'); $MAPS"),
	"1\n0", 'maps: a connection that generates with serve = on maps no engine, BLAS or weights');
is(su("SELECT count(*) FROM peft_generate('smol', ARRAY['Say hi.'], ARRAY['g_ia3'], '{\"max_new_tokens\": 2}'); $MAPS") > 0 ? 1 : 0,
	1, 'maps: the same check sees them when generating in the connection (serve = off)');

$node->stop;
done_testing();
