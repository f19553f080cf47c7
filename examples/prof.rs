use candle_core::{Device, Module, Tensor, Var};
use movq::nn::params::ParamStore;
use std::time::Instant;
fn bench(name: &str, f: impl Fn() -> candle_core::Result<()>) {
    f().unwrap();
    let t = Instant::now();
    for _ in 0..5 {
        f().unwrap();
    }
    println!("{name}: {:?}", t.elapsed() / 5);
}
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let store = ParamStore::new(0, &dev);
    let vb = store.var_builder();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 32, 32, 32), &dev)?)?;
    let gn = movq::nn::layers::group_norm(8, 32, vb.pp("gn"))?;
    bench("groupnorm fwd", || {
        gn.forward(&x)?;
        Ok(())
    });
    bench("groupnorm fwd+bwd", || {
        gn.forward(&x)?.sum_all()?.backward()?;
        Ok(())
    });
    let c = movq::nn::layers::conv3x3(32, 32, vb.pp("c"))?;
    bench("conv3x3 32 @32 fwd", || {
        c.forward(&x)?;
        Ok(())
    });
    bench("conv3x3 32 @32 fwd+bwd", || {
        c.forward(&x)?.sum_all()?.backward()?;
        Ok(())
    });
    let c1 = movq::nn::layers::conv1x1(32, 32, vb.pp("c1"))?;
    bench("conv1x1 32 @32 fwd+bwd", || {
        c1.forward(&x)?.sum_all()?.backward()?;
        Ok(())
    });
    bench("silu fwd+bwd", || {
        x.as_tensor().silu()?.sum_all()?.backward()?;
        Ok(())
    });
    let x16 = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 64, 16, 16), &dev)?)?;
    let at = movq::nn::attention::AttnBlock::new(
        64,
        movq::nn::spatial_norm::NormKind::Group { groups: 8 },
        vb.pp("a"),
    )?;
    bench("attn 64 @16 fwd+bwd", || {
        at.forward(&x16, None)?.sum_all()?.backward()?;
        Ok(())
    });
    let z = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 16, 16, 16), &dev)?)?;
    let sn = movq::nn::spatial_norm::SpatialNorm::new(32, 16, 8, vb.pp("sn"))?;
    bench("spatialnorm 32@32 fwd+bwd", || {
        sn.forward(&x, &z)?.sum_all()?.backward()?;
        Ok(())
    });
    let ds = movq::nn::resample::Downsample::new(32, vb.pp("ds"))?;
    bench("downsample fwd+bwd", || {
        ds.forward(&x)?.sum_all()?.backward()?;
        Ok(())
    });
    Ok(())
}
