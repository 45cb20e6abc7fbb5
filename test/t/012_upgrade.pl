# Upgrades: a database created at 0.1.0 (the released script, kept as it
# was) trains and imports adapters with the current library, is updated by
# ALTER EXTENSION peft UPDATE, and then has all its jobs and adapters, every
# old adapter predicts identically, and its catalog is the same as that of a
# database created at the current version (functions, columns, constraints,
# indexes, policies, grants, what pg_dump dumps).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PeftTest;

my $tiny = tiny_model_dir();
my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16");
$node->start;
my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'peft'});
$node->safe_psql('postgres', qq{
	CREATE DATABASE fresh;
	CREATE EXTENSION peft VERSION '0.1.0';
	SELECT peft_register_model('tiny', '$tiny');
	@{[ reviews_sql('small', 200) ]}
});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'peft'}), '0.1.0',
	'created at 0.1.0');
isnt($current, '0.1.0', "the current version is $current");

train_and_wait($node, 'lora', 'small');
train_and_wait($node, 'lora', 'small', options => '{"epochs": 1, "batch_size": 8, "seed": 5}');
train_and_wait($node, 'dora', 'small', method => 'dora');
train_and_wait($node, 'prefix', 'small', method => 'prefix');
$node->safe_psql('postgres', q{
	SELECT peft_import('imported', 'tiny', peft_export_config('dora'), peft_export('dora'),
	                   labels => (SELECT labels FROM peft.adapters WHERE name = 'dora'));
	SELECT peft_merge('lora', 1);
});

# The texts every version of every adapter is scored on (version_predictions).
my $TEXTS = q{ARRAY['the movie was great today', 'the food was awful', 'we went to the river']};
my $ROWS = q{
	SELECT 'adapter ' || name || ' ' || version || ' ' || method || ' ' || active || ' ' || merged || ' '
	       || md5(weights) || ' ' || md5(config::text) || ' ' || coalesce(labels::text, '-')
	FROM peft.adapters
	UNION ALL
	SELECT 'job ' || id || ' ' || adapter || ' ' || status || ' ' || step FROM peft.jobs
	ORDER BY 1
};
my $before = version_predictions($node, 'postgres', $TEXTS);
my $rows = $node->safe_psql('postgres', $ROWS);
is(scalar(() = $rows =~ /^adapter /mg), 5, 'five adapter versions at 0.1.0');
is(scalar(() = $rows =~ /^job \d+ \w+ succeeded/mg), 4, 'four succeeded jobs at 0.1.0');
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT peft_drop_adapter(NULL)');
like($err, qr/ERROR:  adapter must not be NULL/, 'at 0.1.0 the current library refuses NULL too');
($rc, $out, $err) = $node->psql('postgres', q{SELECT peft_combine('c', ARRAY['lora'], ARRAY[1.0], NULL)});
like($err, qr/ERROR:  combination must not be NULL/, '... also where 0.1.0 declared CALLED ON NULL INPUT');

$node->safe_psql('postgres', 'ALTER EXTENSION peft UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'peft'}), $current,
	"updated to $current");
is($node->safe_psql('postgres', $ROWS), $rows, 'every job and adapter version is there, unchanged');
is(version_predictions($node, 'postgres', $TEXTS), $before, 'every old adapter version predicts identically');
is($node->safe_psql('postgres', q{SELECT peft_verify_model('tiny')}), 't',
	'peft_verify_model (new in 0.2.0) verifies the model registered at 0.1.0');
my $job = train_and_wait($node, 'lora', 'small');
like($job, qr/^\d+$/, 'training works after the update');

# Adapters over decoders (task generation, new in 0.2.0) train in the updated
# database, and generate (the old encoder adapters predicted identically above).
my $decoder = $ENV{PEFT_DECODER_GGUF};
ok(defined $decoder && -f $decoder, 'the decoder GGUF is there (scripts/fetch_model --decoder)');
$node->safe_psql('postgres', qq{
	SELECT peft_register_model('smol', '$decoder');
	CREATE TABLE pairs AS SELECT format('Join %s and %s.', a, b) AS prompt, format('%s-%s', a, b) AS completion
	FROM unnest(ARRAY['red','blue','green','gold']) a, unnest(ARRAY['cat','dog','owl']) b;
});
is($node->safe_psql('postgres', q{
	SELECT peft_train('joiner', 'smol', 'pairs', input => 'prompt', label => 'completion',
	                  task => 'generation',
	                  options => '{"max_steps": 2, "batch_size": 2, "eval_generate": false}',
	                  wait => true) > 0}), 't', 'a generation adapter trains after the update');
is($node->safe_psql('postgres', q{SELECT task || ' ' || method FROM peft.adapters WHERE name = 'joiner'}),
	'generation lora', 'its version is a generation adapter');
cmp_ok(length($node->safe_psql('postgres',
	q{SELECT peft_generate('smol', 'Join red and cat.', adapter => 'joiner', options => '{"max_new_tokens": 4}')})),
	'>', 0, 'and it generates');

# The updated catalog is the one CREATE EXTENSION makes today.
$node->safe_psql('fresh', 'CREATE EXTENSION peft');
my $DEFINITION = q{
	WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'peft'),
	members AS (SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refobjid = ext.oid AND d.deptype = 'e')
	SELECT 'function ' || p.oid::regprocedure || ' returns ' || pg_get_function_result(p.oid)
	       || ' strict=' || p.proisstrict || ' volatile=' || p.provolatile::text || ' parallel=' || p.proparallel::text
	       || ' secdef=' || p.prosecdef || ' config=' || coalesce(p.proconfig::text, '-')
	       || ' acl=' || coalesce(p.proacl::text, '-') || ' src=' || md5(p.prosrc)
	       || ' args=' || pg_get_function_arguments(p.oid)
	FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	UNION ALL
	SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	       || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
	       || ' identity=' || a.attidentity::text || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'peft'
	JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' rls=' || c.relrowsecurity
	       || ' acl=' || coalesce(c.relacl::text, '-') || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'peft'
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
	FROM pg_constraint WHERE connamespace = 'peft'::regnamespace
	UNION ALL
	SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'peft'
	UNION ALL
	SELECT 'policy ' || tablename || ' ' || policyname || ' ' || qual FROM pg_policies WHERE schemaname = 'peft'
	UNION ALL
	SELECT 'view ' || md5(pg_get_viewdef('peft.jobs'::regclass))
	UNION ALL
	SELECT 'dumped ' || c::regclass FROM ext, unnest(ext.extconfig) c
	ORDER BY 1
};
my $fresh = $node->safe_psql('fresh', $DEFINITION);
my $updated = $node->safe_psql('postgres', $DEFINITION);
cmp_ok(length($fresh), '>', 1000, 'the catalog definition was read');
is($updated, $fresh, 'the updated catalog equals the one CREATE EXTENSION makes');

$node->stop;
done_testing();
